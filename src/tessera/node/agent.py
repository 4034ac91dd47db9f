"""The node agent: one user's node, a contributor and sometimes an aggregator.

Theory of operation: the agent keeps the node's identity keys, registers
them, consents to jobs on its user's behalf (when told to), then pulls its
mailbox by long polling. Each job's machine sits in a ``runtime.host.Host``,
the very host the simulator uses; the agent only plugs in its adapters: the
mailbox over HTTPS as outbox, the sandbox as trainer, the wall clock, a log
as observer. It checks every signature (the machines and
``mail.from_envelope`` open everything), every artefact hash and the job
document's signature, re-derives the tree each round (``TreeCheck``),
refuses jobs outside its catalogue, and fetches its user's records from the
data provider only with the user's consent receipt, once per job. Local
training runs in the sandbox (no network, limited memory and CPU time).

Trust (SECURITY.md): the agent knows its data provider from its user
(``provider``, ``provider_key``), never from a job, and talks https only. It
consents only to jobs naming that provider, sends the consent with the
provider's attestation (which carries its beacon commitment), reveals its
beacon secret once the job freezes its participants, and before it sends
anything in a job it checks every participant's attestation and reveal and
derives the trees' beacon itself.

Timers are wall-clock; across machines this assumes clocks synchronised to
within a fraction of the job's phase timeout (NTP), as deadlines do anywhere.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import pandas as pd

from tessera.consent import (
    ConsentError,
    ConsentTerms,
    check_attestation,
    grant_consent,
    revoke_consent,
    sign_attestation_request,
    sign_records_request,
)
from tessera.crypto.documents import (
    SignedDocument,
    sign_document,
    verify_document,
)
from tessera.crypto.envelope import ReplayGuard
from tessera.crypto.keys import PublicKeys
from tessera.data.prepare import Preprocessor
from tessera.errors import ConfigError, RemoteProtocolError, TesseraError
from tessera.ids import COORDINATOR, NodeId
from tessera.jobs.beacon import (
    beacon_of,
    commitment,
    new_secret,
    read_reveal,
    roster_digest,
    sign_reveal,
)
from tessera.jobs.document import JobSpec
from tessera.jobs.totals import read_statistics_document
from tessera.protocol import Aggregator, Contributor, Node, TreeCheck
from tessera.protocol.contributor import SecureContext
from tessera.protocol.effects import (
    Rejected,
    Send,
)
from tessera.protocol.events import (
    Event,
    LocalStatisticsReady,
    LocalTrainingFailed,
    LocalUpdateReady,
)
from tessera.protocol.kinds import REGISTRATION_KIND
from tessera.protocol.messages import AggregateRequest
from tessera.protocol.quality import LocalQuality
from tessera.runtime.host import Host, Observer, TrainingTask, WallClock
from tessera.runtime.transport.client import (
    CoordinatorClient,
    ServiceRefused,
    ServiceUnavailable,
    check,
)
from tessera.runtime.transport.mail import from_envelope, read_weights_artefact, to_envelope
from tessera.runtime.transport.urls import require_https
from tessera.sandbox import (
    DEFAULT_CATALOGUE,
    NodeCatalogue,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxRefused,
)
from tessera.storage.errors import DiskFull
from tessera.storage.keyfile import load_or_create_keys
from tessera.storage.private import private_dir, replace_private
from tessera.weights import Vector

log = logging.getLogger("tessera.node")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # ids.job_id_of's form
#: Seconds between tries while the coordinator is unreachable (past the client's own patience).
OFFLINE_RETRY_S = 5.0


@dataclass
class AgentConfig:
    node_id: str
    coordinator: str
    keys_path: Path
    state_dir: Path
    subject: str | None = None  # the user's id at the data provider
    # The data provider the user enrolled this node with: its URL and the fingerprint of
    # its keys, both from the user's side (never from a job, whose author could name any).
    provider: str | None = None
    provider_key: str | None = None
    insecure_loopback: bool = False  # development: plain http to services on loopback
    organisation: str | None = None
    passphrase: bytes | None = None
    verify: Any = True  # an ssl.SSLContext for a private CA
    consent_to: list[str] = field(default_factory=list)
    consent_days: float = 30.0
    isolate_network: Literal["required", "best_effort"] = "required"
    catalogue: NodeCatalogue = DEFAULT_CATALOGUE
    # The sandbox child's bounds; raise start_timeout where many nodes start at once.
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    exit_when_done: bool = True
    poll_wait: float = 20.0
    # The user's consent page ("host:port", port 0: any free one), served by this agent
    # (node.consent_page): loopback only unless consent_page_remote, reached with the
    # secret link the agent prints once and keeps in state_dir/consent-page.url.
    consent_page: str | None = None
    consent_page_remote: bool = False


@dataclass
class _Job:
    spec: JobSpec
    participants: list[NodeId]
    directory: dict[NodeId, PublicKeys]
    replay: ReplayGuard
    shuffle_id: int
    receipt: SignedDocument | None
    data: tuple[np.ndarray, np.ndarray] | None = None
    frame: pd.DataFrame | None = None  # the user's raw records, fetched once
    host: Host = field(init=False)  # its ports need the job: set right after


class NodeAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        require_https(cfg.coordinator, "coordinator", insecure_loopback=cfg.insecure_loopback)
        if cfg.subject is not None and (cfg.provider is None or cfg.provider_key is None):
            raise ConfigError(
                "provider", "a node with a user needs its data provider's URL and key fingerprint"
            )
        if cfg.provider is not None:
            require_https(cfg.provider, "provider", insecure_loopback=cfg.insecure_loopback)
        self.cfg = cfg
        self.node = NodeId(cfg.node_id)
        self.keys = load_or_create_keys(cfg.keys_path, cfg.passphrase)
        private_dir(cfg.state_dir)  # receipts name the user: 0700 when made here
        self.client = CoordinatorClient(
            cfg.coordinator, verify=cfg.verify, keys=self.keys, node=self.node
        )
        self.sandbox = Sandbox(
            cfg.sandbox_limits, isolate_network=cfg.isolate_network, catalogue=cfg.catalogue
        )
        self.jobs: dict[str, _Job] = {}
        self.finished: set[str] = set()
        self.revealed: set[str] = set()  # jobs we sent our beacon reveal to (or need not)
        self.cursor = self._saved_cursor = self._load_cursor()
        self._cursor_unsaved = False  # the last save found the disk full (said once)
        self._coordinator_keys: PublicKeys | None = None
        # The jobs this user consented to: told at the start, or saved (a receipt and no
        # revocation) by an earlier run, or granted since on the consent page, whose
        # thread changes them under this lock; the loop reads a copy each turn.
        self._consent_lock = threading.Lock()  # the sets, held briefly
        self._decide_lock = threading.Lock()  # one consent or revocation at a time
        self._consented: set[str] = set(cfg.consent_to) | self._saved_consents()
        self._revoked: set[str] = set()  # revoked while running: the loop drops their records
        self.page: Any = None  # the consent page, while it serves (node.consent_page)

    def consented_jobs(self) -> list[str]:
        """The jobs this node takes part in on its user's consent (a copy)."""
        with self._consent_lock:
            return sorted(self._consented)

    def revoked_jobs(self) -> list[str]:
        """The jobs whose consent this user revoked (saved revocations)."""
        folder = self.cfg.state_dir / "revocations"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def _saved_consents(self) -> set[str]:
        folder = self.cfg.state_dir / "receipts"
        if not folder.is_dir():
            return set()
        revoked = set(self.revoked_jobs())
        return {p.stem for p in folder.glob("*.json")} - revoked

    # -- identity and consent ---------------------------------------------------------
    def register(self) -> None:
        import base64

        body = {
            "node_id": self.node,
            "public_keys": base64.b64encode(self.keys.public.to_bytes()).decode(),
            "organisation": self.cfg.organisation,
            "at": time.time(),
        }
        self.client.register(sign_document(self.keys, REGISTRATION_KIND, body))

    def consent(self, job_id: str, client: CoordinatorClient | None = None) -> SignedDocument:
        """Grant (or re-send) this user's consent to ``job_id``, after checking the job.

        The consent goes to the coordinator with the attestation of this node
        that the user's own data provider signs for it (asked once, kept). From
        then on the loop takes part in the job. ``client``: another thread's own
        (the consent page's), so the loop's long poll never holds the consent up.
        Consenting again after a revocation signs a new receipt.
        """
        with self._decide_lock:
            with self._consent_lock:
                had = job_id in self._consented
                # Counted before it is sent: if our consent starts the job, the loop polls
                # briefly for its participants instead of waiting out a long poll.
                self._consented.add(job_id)
            try:
                receipt = self._consent(job_id, client or self.client)
            except BaseException:
                if not had:
                    with self._consent_lock:
                        self._consented.discard(job_id)
                raise
            with self._consent_lock:
                self._revoked.discard(job_id)
            return receipt

    def _consent(self, job_id: str, client: CoordinatorClient) -> SignedDocument:
        saved = self._receipt_path(job_id)
        revoked = self._revocation_path(job_id)
        spec = JobSpec.from_document(client.job_document(job_id))
        if spec.data.provider != self.cfg.provider_key:
            raise TesseraError(
                f"job {job_id} asks for data at provider {spec.data.provider[:16]}..., "
                "not at the one this node's user is enrolled with: refused"
            )
        if revoked.exists():  # consenting again: a new receipt (the old one is withdrawn)
            saved.unlink(missing_ok=True)
            revoked.unlink()
        if saved.exists():
            receipt = SignedDocument.from_json(json.loads(saved.read_text()))
        else:
            self.cfg.catalogue.check(spec.model, spec.recipe, 0)
            now = time.time()
            terms = ConsentTerms(
                job_id=job_id,
                job_digest=spec.digest,
                purpose=spec.purpose,
                data_categories=spec.data.fields,
                ai_provider=spec.ai_provider.fingerprint,
                user=self.node,
                subject=self.cfg.subject,
                issued_at=now,
                expires_at=now + self.cfg.consent_days * 86400,
            )
            receipt = grant_consent(self.keys, terms)
            _write_json(saved, receipt.to_json())
        client.consent(job_id, receipt, self._attestation(spec, receipt))
        return receipt

    def _attestation(self, spec: JobSpec, receipt: SignedDocument) -> SignedDocument:
        """Our data provider's word that this node stands for our user in ``spec``'s job."""
        saved = self.cfg.state_dir / "attestations" / f"{spec.job_id}.json"
        if saved.exists():
            return SignedDocument.from_json(json.loads(saved.read_text()))
        if self.cfg.subject is None or self.cfg.provider_key is None:
            raise TesseraError("this node has no user at a data provider: it cannot take part")
        request = sign_attestation_request(
            self.keys,
            job_id=spec.job_id,
            job_digest=spec.digest,
            audience=self.cfg.provider_key,
            node=self.node,
            user=self.cfg.subject,
            commitment=commitment(
                self._beacon_secret(spec), job_digest=spec.digest, node=self.node
            ),
            at=time.time(),
        )
        body = {"job": spec.document.to_json(), "consent": receipt.to_json()}
        answer = self._provider_post("/v1/attestations", {**body, "request": request.to_json()})
        attestation = SignedDocument.from_json(answer.json())
        try:  # the provider's answer is checked as every peer will check it
            committed = check_attestation(
                attestation,
                provider=self.cfg.provider_key,
                job_digest=spec.digest,
                node=self.node,
                node_keys=self.keys.public,
            )
        except ConsentError as exc:
            raise RemoteProtocolError(f"the data provider's attestation: {exc}") from None
        if committed != request.body["commitment"]:
            raise RemoteProtocolError("the data provider's attestation carries another commitment")
        _write_json(saved, attestation.to_json())
        return attestation

    # -- the tree beacon (jobs.beacon) -----------------------------------------------------
    def _beacon_secret(self, spec: JobSpec) -> bytes:
        """This node's beacon secret for the job: drawn once, kept 0600 until revealed."""
        path = self.cfg.state_dir / "beacon" / f"{spec.job_id}.secret"
        if path.exists():
            return bytes.fromhex(path.read_text())
        secret = new_secret()
        private_dir(path.parent)
        replace_private(path, secret.hex())  # whole or not at all: an empty one reads as b""
        return secret

    def _reveal_pending(self) -> bool:
        """Reveal our beacon secret to every job that froze its participants; True if any
        job we consented to still waits for its participants to be fixed."""
        waiting = False
        for job_id in self.consented_jobs():
            if job_id in self.revealed or job_id in self.finished:
                continue
            try:
                listing = self.client.participants(job_id)
            except ServiceRefused as exc:
                waiting = waiting or exc.status == 409  # not started: still waiting
                continue
            spec = JobSpec.from_document(self.client.job_document(job_id))
            frozen = [p["node_id"] for p in listing["participants"]]
            if spec.secure and self.node in frozen:
                reveal = sign_reveal(  # for this list: dropping anyone later shows
                    self.keys,
                    job_id=spec.job_id,
                    job_digest=spec.digest,
                    node=self.node,
                    roster=roster_digest(frozen),
                    secret=self._beacon_secret(spec),
                )
                self.client.reveal(job_id, reveal)
            self.revealed.add(job_id)
        return waiting

    def _provider_post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST to this node's own data provider (its URL from the user, never a job's)."""
        if self.cfg.provider is None:
            raise TesseraError("this node has no data provider")
        with httpx.Client(verify=self.cfg.verify, timeout=60) as http:
            return check(http.post(f"{self.cfg.provider.rstrip('/')}{path}", json=body))

    def revoke(self, job_id: str, client: CoordinatorClient | None = None) -> SignedDocument:
        """Revoke this user's consent to ``job_id``: the coordinator withdraws the node,
        the loop forgets the user's records and never trains for the job again, the data
        provider releases no more records. Kept (0600), so a restarted agent does not
        take part again."""
        with self._decide_lock:
            saved = self._receipt_path(job_id)
            if not saved.exists() or self._revocation_path(job_id).exists():
                raise TesseraError(f"this node holds no consent to {job_id}")
            receipt = SignedDocument.from_json(json.loads(saved.read_text()))
            revocation = revoke_consent(self.keys, receipt=receipt, at=time.time())
            (client or self.client).revoke(job_id, revocation, receipt)
            _write_json(self._revocation_path(job_id), revocation.to_json())
            with self._consent_lock:
                self._consented.discard(job_id)
                self._revoked.add(job_id)
        try:  # our own provider refuses the records from now on too
            body = {"revocation": revocation.to_json(), "receipt": receipt.to_json()}
            self._provider_post("/v1/revocations", body)
        except (httpx.HTTPError, ServiceRefused, TesseraError) as exc:
            log.warning("could not tell the data provider of the revocation: %s", exc)
        return revocation

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        # Start the sandbox (seconds: it loads torch) before consenting, so a job that
        # starts on our consent never waits for it mid-round.
        self.register()
        if self.cfg.consent_page is not None:  # before the sandbox: the user reads at once
            from tessera.node.consent_page import start_consent_page

            self.page = start_consent_page(self)
        try:
            self.sandbox.ping()
        except SandboxError as exc:
            # Not the agent's end: each round tries a fresh sandbox and, failing, declines
            # with the reason, so the job goes on without this node (a limit too small).
            log.warning("%s: the sandbox did not start: %s", self.node, exc)
        for job_id in self.cfg.consent_to:
            self.consent(job_id)
        try:
            self._serve(stop)
        finally:
            if self.page is not None:
                self.page.stop()
            self.sandbox.close()
            self.client.close()

    def _serve(self, stop: threading.Event) -> None:
        """Poll the mailbox, handle the mail, fire the timers, until the jobs are done or
        ``stop``. A coordinator unreachable past the client's patience is waited for,
        however long: a node offline for hours (a laptop closed, a network cut) takes
        part again once it is back, its rounds meanwhile counted as dropped."""
        last_status = 0.0
        offline: float | None = None  # since when the coordinator has been unreachable
        while not stop.is_set():
            try:
                self._drop_revoked()
                wait = self._next_wait()
                if self._reveal_pending():  # the coordinator wakes our poll when it freezes
                    wait = min(wait, 2.0)
                for mail_id, data in self.client.pull_mail(self.cursor, wait):
                    self._on_envelope(data)
                    self.cursor = mail_id
                self._save_cursor()
                self._fire_timers()
                if time.monotonic() - last_status > 5.0:
                    last_status = time.monotonic()
                    if self._all_done():
                        return
            except ServiceUnavailable as exc:
                if offline is None:
                    offline = time.monotonic()
                    log.warning("%s: %s; waiting for it to come back", self.node, exc)
                stop.wait(OFFLINE_RETRY_S)
                continue
            if offline is not None:
                away = time.monotonic() - offline
                log.warning("%s: the coordinator is reachable again after %.0f s", self.node, away)
                offline = None

    def _drop_revoked(self) -> None:
        """For the jobs revoked meanwhile: forget the user's records at once; the node
        never trains or counts for them again (``_train``, ``_count``). It still serves
        the aggregator seats the coordinator gives it (masked sums of others' updates, no
        record of its user): from the round after the revocation the coordinator seats a
        backup in its place where it has one, so no round waits on a silent seat."""
        with self._consent_lock:
            dropped, self._revoked = self._revoked, set()
        for job_id in dropped:
            job = self.jobs.get(job_id)
            if job is not None:
                job.data, job.frame, job.receipt = None, None, None
            log.info("%s: consent to %s revoked: its records are no longer used", self.node, job_id)

    def _next_wait(self) -> float:
        due = min((job.host.next_timer() for job in self.jobs.values()), default=math.inf)
        return float(np.clip(due - time.time(), 0.0, self.cfg.poll_wait))

    def _all_done(self) -> bool:
        # A node told which jobs to consent to ends with them; one serving its user's
        # consent page keeps serving it.
        if not self.cfg.exit_when_done or not self.cfg.consent_to or self.page is not None:
            return False
        consented = self.consented_jobs()
        for job_id in consented:
            if job_id not in self.finished:
                try:
                    state = self.client.status(job_id)["state"]
                except ServiceRefused as exc:
                    if exc.status != 404:
                        raise
                    state = "failed"  # a saved consent to a job this coordinator forgot
                if state in ("finished", "failed"):
                    self.finished.add(job_id)
        return all(j in self.finished for j in consented)

    def _fire_timers(self) -> None:
        now = time.time()
        for job in list(self.jobs.values()):
            job.host.fire_due(now)

    def _on_envelope(self, data: bytes) -> None:
        from tessera.crypto.envelope import peek

        try:
            job_id = peek(data).job_id
            if job_id not in self.jobs and self._revoked_job(job_id):
                log.info("%s: mail for %s, whose consent was revoked: dropped", self.node, job_id)
                return
            job = self._job(job_id)
            event = from_envelope(
                data,
                me=self.node,
                job_id=job_id,
                keys=self.keys,
                directory=job.directory,
                replay=job.replay,
                resolve_weights=self._weights,
            )
        except (RemoteProtocolError, SandboxRefused) as exc:
            log.warning("%s: refused an envelope: %s", self.node, exc)
            return
        seat = event.message
        if isinstance(seat, AggregateRequest):  # an operator reads which seats it serves
            log.info(
                "%s: round %d: serving seat %d of group %s",
                self.node,
                seat.round,
                seat.position,
                seat.group,
            )
        job.host.handle(event)

    # -- jobs, data and training ----------------------------------------------------------
    def _job(self, job_id: str) -> _Job:
        found = self.jobs.get(job_id)
        if found is not None:
            return found
        spec = JobSpec.from_document(self.client.job_document(job_id))
        self.cfg.catalogue.check(spec.model, spec.recipe, 0)
        listing = self.client.participants(job_id)
        coordinator = self._coordinator()
        directory: dict[NodeId, PublicKeys] = {COORDINATOR: coordinator}
        organisations: dict[NodeId, str | None] = {}
        secrets_by_node: dict[str, bytes] = {}
        roster = roster_digest(p["node_id"] for p in listing["participants"])
        for entry in listing["participants"]:
            doc = SignedDocument.from_json(entry["registration"])
            body = verify_document(doc, kind=REGISTRATION_KIND)
            if body.get("node_id") != entry["node_id"]:
                raise RemoteProtocolError("a participant's registration names another node")
            node = NodeId(entry["node_id"])
            # Before anything is sent: every participant is vouched for by the job's data
            # provider, so the coordinator cannot seat nodes of its own around us.
            vouched, revealed = entry.get("attestation"), entry.get("reveal")
            try:
                committed = check_attestation(
                    None if vouched is None else SignedDocument.from_json(vouched),
                    provider=spec.data.provider,
                    job_digest=spec.digest,
                    node=node,
                    node_keys=doc.signer,
                )
                if spec.secure:  # the trees' beacon: every secret, each the committed one
                    if revealed is None:
                        raise RemoteProtocolError(f"{node} has not revealed its beacon secret")
                    secrets_by_node[node] = read_reveal(
                        SignedDocument.from_json(revealed),
                        node=node,
                        node_keys=doc.signer,
                        job_digest=spec.digest,
                        committed=committed,
                        roster=roster,
                    )
            except (ConsentError, RemoteProtocolError) as exc:
                raise RemoteProtocolError(f"refusing to take part in {job_id}: {exc}") from None
            directory[node] = doc.signer
            organisations[node] = body.get("organisation")
        participants = sorted(n for n in directory if n != COORDINATOR)
        if self.node not in participants:
            raise RemoteProtocolError(f"{self.node} is not a participant of {job_id}")
        machine: Node | Contributor
        if spec.secure:
            secure = spec.secure_params()
            check_tree = TreeCheck(
                spec.round_params(),
                participants,
                secure.tree,
                organisations,
                audit=(secure.audit, secure.audit_fraction),
                beacon=beacon_of(spec.digest, secrets_by_node),
                statistics=0 if secure.statistics is None else secure.statistics.rounds,
                group_sums=secure.disclosure,
            )
            machine = Node(
                Contributor(
                    self.node,
                    spec.job_id,
                    SecureContext(
                        keys=self.keys,
                        directory=directory,
                        tree_check=check_tree,
                        privacy=secure.privacy,
                    ),
                ),
                Aggregator(self.node, spec.job_id, self.keys, directory, check_tree),
            )
        else:
            machine = Contributor(self.node, spec.job_id)
        saved = self._receipt_path(job_id)
        receipt = (
            SignedDocument.from_json(json.loads(saved.read_text())) if saved.exists() else None
        )
        job = _Job(
            spec=spec,
            participants=participants,
            directory=directory,
            replay=ReplayGuard(),
            shuffle_id=participants.index(self.node),
            receipt=receipt,
        )
        job.host = Host(
            self.node,
            machine,
            outbox=_Mailbox(self, job),
            clock=WallClock(),
            job_seed=spec.config.job.seed,
            trainer=_SandboxTrainer(self, job),
            counter=_Counter(self, job),
            observer=_Log(self.node),
        )
        self.jobs[job_id] = job
        return job

    def _coordinator(self) -> PublicKeys:
        if self._coordinator_keys is None:
            self._coordinator_keys = self.client.coordinator_keys()
        return self._coordinator_keys

    def _weights(self, sha256: str, length: int) -> Vector:
        return read_weights_artefact(self.client.get_artefact(sha256), sha256, length)

    def _train(self, job: _Job, task: TrainingTask) -> Event:
        if self._revoked_job(job.spec.job_id):
            return LocalTrainingFailed(round=task.round, reason="the user revoked consent")
        try:
            x, y = self._records(job)
            self.cfg.catalogue.check(job.spec.model, job.spec.recipe, len(y))
            outcome = self.sandbox.train(
                job.spec.model,
                job.spec.recipe,
                x,
                y,
                task.weights,
                seed=task.seed,
                shuffle_id=job.shuffle_id,
                prox_mu=task.prox_mu,
                round=task.schedule_round,
                quality=task.quality,
            )
        except (SandboxError, SandboxRefused, TesseraError, httpx.HTTPError) as exc:
            log.warning("%s: local training failed: %s", self.node, exc)
            return LocalTrainingFailed(round=task.round, reason=str(exc)[:200])
        measured = None
        if outcome.loss_before is not None and outcome.norm is not None:
            measured = LocalQuality(
                loss_before=outcome.loss_before, norm=outcome.norm, labels=outcome.labels
            )
        return LocalUpdateReady(
            round=task.round,
            delta=outcome.delta,
            num_samples=outcome.num_samples,
            loss=outcome.loss,
            quality=measured,
        )

    def _count(self, job: _Job, round: int) -> Event:
        """This user's statistics for one of the job's statistics rounds: what a fit counts
        of its records (``Preprocessor.counted_vector``), by the plan the document implies,
        with the derived columns' statistics the earlier rounds' totals fitted."""
        if self._revoked_job(job.spec.job_id):
            return LocalTrainingFailed(round=round, reason="the user revoked consent")
        try:
            pre = self._preprocessor(job, rounds=round)
            vector = pre.counted_vector(self._frame(job), round)
        except (TesseraError, httpx.HTTPError) as exc:
            log.warning("%s: could not count the records: %s", self.node, exc)
            return LocalTrainingFailed(round=round, reason=str(exc)[:200])
        return LocalStatisticsReady(round=round, vector=vector)

    def _records(self, job: _Job) -> tuple[np.ndarray, np.ndarray]:
        """The user's records for this job, encoded as every participant encodes them."""
        if job.data is not None:
            return job.data
        prepared = self._preprocessor(job).transform(self._frame(job))
        job.data = (prepared.x, prepared.y)
        return job.data

    def _preprocessor(self, job: _Job, rounds: int | None = None) -> Preprocessor:
        """The document's encoding, refitted from the totals of its first ``rounds``
        statistics rounds (None: all of them, as training needs)."""
        spec = job.spec
        pre = spec.preprocessor()
        if not spec.statistics or rounds == 0:
            return pre
        plans = pre.statistics_plans()
        wanted = len(plans) if rounds is None else rounds
        sha = self.client.status(spec.job_id).get("statistics")
        totals = (
            read_statistics_document(self.client.get_artefact(sha), plans)
            if isinstance(sha, str)
            else []
        )
        if len(totals) < wanted:
            raise TesseraError(f"the job's statistics round {len(totals)} has no total yet")
        fitted = [t for t, _ in totals[:wanted]]
        return pre.refitted(fitted, standardize=spec.config.data.standardize)

    def _frame(self, job: _Job) -> pd.DataFrame:
        """The user's raw records for this job, from the provider, with the consent receipt."""
        if job.frame is not None:
            return job.frame
        if job.receipt is None or self.cfg.subject is None:
            raise TesseraError("this node holds no consent receipt (or user id) for the job")
        spec = job.spec
        assert self.cfg.provider_key is not None  # a node with a user has one (__init__)
        request = sign_records_request(
            self.keys,
            job_id=spec.job_id,
            job_digest=spec.digest,
            audience=self.cfg.provider_key,
            node=self.node,
            user=self.cfg.subject,
            dataset=spec.data.dataset,
            fields=spec.data.fields,
            at=time.time(),
        )
        body = {
            "dataset": spec.data.dataset,
            "fields": list(spec.data.fields),
            "job": spec.document.to_json(),
            "consent": job.receipt.to_json(),
            "request": request.to_json(),
        }
        payload = self._provider_post("/v1/records", body).json()
        job.frame = pd.DataFrame(payload["rows"], columns=payload["fields"])
        return job.frame

    # -- small persistence ------------------------------------------------------------------
    def _receipt_path(self, job_id: str) -> Path:
        return self.cfg.state_dir / "receipts" / f"{job_id}.json"

    def _revocation_path(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise RemoteProtocolError(f"not a job id: {job_id[:80]!r}")
        return self.cfg.state_dir / "revocations" / f"{job_id}.json"

    def _revoked_job(self, job_id: str) -> bool:
        """Revoked, and not consented to again since."""
        if job_id in self.consented_jobs():
            return False
        return not _JOB_ID.match(job_id) or self._revocation_path(job_id).exists()

    def _load_cursor(self) -> int:
        path = self.cfg.state_dir / "cursor"
        return int(path.read_text()) if path.exists() else 0

    def _save_cursor(self) -> None:
        """Keep the mailbox cursor. On a full disk the node goes on (said once): the
        cursor only spares re-reading mail after a restart, which the replay guard
        refuses anyway."""
        if self.cursor == self._saved_cursor:  # a poll with no mail: nothing to flush
            return
        try:
            replace_private(self.cfg.state_dir / "cursor", str(self.cursor))
            self._saved_cursor = self.cursor
        except DiskFull as exc:
            if not self._cursor_unsaved:
                log.error("%s: the mailbox cursor is not saved: %s", self.node, exc)
            self._cursor_unsaved = True
        else:
            self._cursor_unsaved = False


class _Mailbox:
    """The hosts' outbox: every Send becomes a signed envelope posted to the coordinator."""

    def __init__(self, agent: NodeAgent, job: _Job) -> None:
        self.agent, self.job = agent, job

    def send(self, sender: NodeId, effect: Send) -> None:
        out = to_envelope(
            effect,
            sender=sender,
            job_id=self.job.spec.job_id,
            keys=self.agent.keys,
            directory=self.job.directory,
            publish_weights=_no_publishing,
        )
        try:
            self.agent.client.post_mail(out.data)
        except ServiceRefused as exc:
            log.warning("%s: coordinator refused our %s: %s", sender, out.kind, exc)


class _SandboxTrainer:
    """The hosts' trainer: the user's records, in the sandbox, answered at once."""

    def __init__(self, agent: NodeAgent, job: _Job) -> None:
        self.agent, self.job = agent, job

    def start(self, actor: NodeId, task: TrainingTask) -> Event | None:  # noqa: ARG002
        return self.agent._train(self.job, task)


class _Counter:
    """The hosts' counter: the user's records counted by the job's statistics plan."""

    def __init__(self, agent: NodeAgent, job: _Job) -> None:
        self.agent, self.job = agent, job

    def count(self, actor: NodeId, round: int) -> Event | None:  # noqa: ARG002
        return self.agent._count(self.job, round)


class _Log(Observer):
    def __init__(self, node: NodeId) -> None:
        self.node = node

    def rejected(self, actor: NodeId, effect: Rejected) -> None:  # noqa: ARG002
        log.warning("%s refused %s: %s", self.node, effect.sender, effect.reason)


def _no_publishing(_: Vector) -> str:
    raise RemoteProtocolError("nodes never send train requests")


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_private(path, json.dumps(value))  # a receipt names the user: 0600
