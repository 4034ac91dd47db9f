"""The coordinator's business logic, below HTTP: nodes, jobs, consents, mail.

Every input is checked here with a clear reason (``Refused`` carries the
HTTP status the API answers with); nothing changes on a refusal. Running
jobs each have a ``JobDriver`` thread; a restart resumes them from the
store (see ``driver``). Each job's events go to its signed audit log
(``audit_log``) as they are committed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tessera.audit import BrokenLog
from tessera.consent import ConsentError, check_attestation, check_consent
from tessera.coordinator.audit_log import AuditLogs
from tessera.coordinator.driver import JobDriver
from tessera.crypto.documents import SignedDocument, verify_document
from tessera.crypto.envelope import EnvelopeHeader, peek, verify_envelope
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import ConfigError, InvalidEnvelope, RemoteProtocolError, TesseraError
from tessera.ids import COORDINATOR, NodeId
from tessera.jobs.beacon import beacon_of, read_reveal, roster_digest
from tessera.jobs.document import JobSpec, check_tree_feasible
from tessera.protocol.kinds import REGISTRATION_KIND, Kind
from tessera.protocol.limits import (
    ENVELOPE_LIMITS,
    MAX_ENVELOPE_BYTES,
    MAX_PARAMETERS,
    TO_COORDINATOR_ONLY,
    TO_NODE_ONLY,
    RelayBounds,
    accusation_bytes,
    relay_bounds,
)
from tessera.runtime.transport.mail import check_weights_artefact, read_weights_artefact
from tessera.storage import (
    Conflict,
    ConsentRecord,
    JobRecord,
    MailItem,
    NotFound,
    OverQuota,
    Replayed,
    Store,
)

log = logging.getLogger("tessera.coordinator")


class Refused(Exception):
    """An input the coordinator will not take: ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class MailSignal:
    """Wakes a recipient's long polls (on the event loop) when mail for it is stored.

    One event per recipient, so storing a share for one node does not wake
    every other waiting poll (with 25 idle polls, waking all of them cut the
    mailbox's posting rate to a fifth). A poll takes its recipient's event
    *before* it reads the store, so mail stored in between is not missed.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}
        self.closing = False  # the server is stopping: polls answer with what they have

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events = {}
        self.closing = False

    def close_all(self) -> None:
        """Wake every poll for good (callable from any thread, a signal handler's too):
        the server is stopping, and a poll held to its end would hold the shutdown."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        self.closing = True
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    def notify(self, recipients: Iterable[str]) -> None:
        """Wake the polls of ``recipients`` (callable from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._bump, tuple(recipients))

    def _bump(self, recipients: tuple[str, ...]) -> None:
        for recipient in recipients:
            event = self._events.pop(recipient, None)
            if event is not None:
                event.set()

    def event_for(self, recipient: str) -> asyncio.Event | None:
        """The event the next mail for ``recipient`` sets (on the loop thread only)."""
        if self._loop is None:
            return None
        return self._events.setdefault(recipient, asyncio.Event())

    @staticmethod
    async def wait(event: asyncio.Event | None, timeout: float) -> None:
        if event is None or timeout <= 0:
            await asyncio.sleep(max(0.0, min(timeout, 0.05)))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


def parse_document(value: object, what: str) -> SignedDocument:
    try:
        return SignedDocument.from_json(value)
    except (RemoteProtocolError, ValueError) as exc:  # ValueError: NaN or infinity in the body
        raise Refused(400, f"{what}: {exc}") from None


#: What one AI provider's keys may upload: initial weights of a few jobs of the largest model.
UPLOAD_COUNT = 8
UPLOAD_BYTES = 4 * (MAX_PARAMETERS * 4 + (64 << 10))


#: A mail batch's bytes, past its first envelope (``mail_for``).
MAIL_BATCH_BYTES = 8 << 20

#: Seconds a secure job's frozen participants have to reveal their beacon secrets.
REVEAL_WAIT = 300.0


class CoordinatorService:
    def __init__(
        self,
        store: Store,
        keys: NodeKeys,
        *,
        clock: Callable[[], float] = time.time,
        upload_quota: tuple[int, int] = (UPLOAD_COUNT, UPLOAD_BYTES),
        reveal_wait: float = REVEAL_WAIT,
        audit_dir: Path | None = None,
    ) -> None:
        """``reveal_wait``: seconds a secure job's participants have, once it froze them,
        to reveal their beacon secrets before the job fails (nodes reveal at once);
        ``audit_dir``: the folder of the jobs' audit logs (None: none are kept)."""
        self.reveal_wait = reveal_wait
        self.store = store
        self.upload_quota = upload_quota
        self.keys = keys
        self.clock = clock
        self.signal = MailSignal()
        self.drivers: dict[str, JobDriver] = {}
        self._keys_cache: dict[str, PublicKeys] = {COORDINATOR: keys.public}
        self._bounds: dict[str, RelayBounds] = {}
        self._reveal_timers: dict[str, threading.Timer] = {}
        self._lock = threading.RLock()
        self.audits = AuditLogs(audit_dir, keys, clock=clock)

    # -- lifecycle ------------------------------------------------------------------
    def resume(self) -> None:
        """Restart the drivers of every running job, from their event logs.

        A secure job still collecting beacon reveals waits for them again (its
        deadline counts from its start, so a restart does not extend it).
        """
        for job in self.store.list_jobs():
            if job.state != "running":
                self._catch_up(job)
                continue
            try:  # a broken audit log fails its job: it is never restarted over
                self.audits.open(job.job_id)
            except (BrokenLog, OSError) as exc:
                self._fail(job.job_id, f"cannot resume: audit log: {exc}", audit=False)
                continue
            if self._awaits_beacon(job):
                self._arm_reveal_deadline(job)
                self._catch_up(job)
                continue
            try:
                driver = self._driver(job)
                replayed = driver.recover()
                if replayed == 0:
                    driver.start()
                self._withdraw_revoked(job, driver)
                self._catch_up(job)
                driver.audit_tree()
            except (TesseraError, RuntimeError) as exc:  # one bad job never stops the others
                self.drivers.pop(job.job_id, None)
                self._fail(job.job_id, f"cannot resume: {exc}")
                continue
            log.info("%s: resumed after %d logged events", job.job_id, replayed)
            driver.run_in_thread()

    def _catch_up(self, job: JobRecord) -> None:
        """What the job's audit log missed (a crash after an event, before its record),
        re-derived from the store; jobs without a log (older ones) and ended logs are left."""
        path = self.audits.path(job.job_id)
        if path is None or not path.is_file() or self.audits.ended(job.job_id):
            return
        try:
            self.audits.catch_up(self.store, job, lambda: self._tensors(job))
        except (TesseraError, NotFound) as exc:
            log.error("%s: audit log not caught up: %s", job.job_id, exc)

    def _withdraw_revoked(self, job: JobRecord, driver: JobDriver) -> None:
        """Participants whose revocation was stored but never reached the machine (a
        crash in between) are withdrawn now."""
        for c in self.store.consents(job.job_id):
            node = c.node_id
            revoked = c.revoked_at is not None and node in (job.participants or ())
            if revoked and node not in driver.withdrawn() and not driver.finished:
                from_round = driver.withdraw(NodeId(node))
                self.audits.revoked(job.job_id, node, c.digest, from_round)

    def _fail(self, job_id: str, reason: str, *, audit: bool = True) -> None:
        """The job fails, said in its status and as its audit log's last record."""
        self.store.update_job(job_id, state="failed", error=reason)
        log.error("%s: %s", job_id, reason)
        if audit:
            job = self.store.get_job(job_id)
            rounds = len(self.store.rounds(job_id))
            tensors = self._tensors(job)
            self.audits.finished(
                job_id, None, tensors=tensors, rounds=rounds, status="failed", error=reason
            )

    def _tensors(self, job: JobRecord) -> tuple[str, ...]:
        """The job's model's tensor names, in its layout's order (none for a job whose
        document no longer reads: it has no model to rebuild either)."""
        try:  # torch, on meta tensors, only when asked: the coordinator's extra lacks it
            from tessera.training import layout

            return layout(self.spec(job).model).names
        except ImportError:
            log.warning("%s: no torch here: the final record names no tensor order", job.job_id)
            return ()
        except (TesseraError, ValueError) as exc:
            log.error("%s: no model layout: %s", job.job_id, exc)
            return ()

    def audit_log(self, job_id: str) -> bytes:
        """The job's audit log as written so far; 404 if there is none."""
        data = self.audits.read(self.job(job_id).job_id)
        if data is None:
            raise Refused(404, f"job {job_id!r} has no audit log on this coordinator")
        return data

    def close(self) -> None:
        for timer in self._reveal_timers.values():
            timer.cancel()
        for driver in self.drivers.values():
            driver.stop()
        self.audits.close()

    # -- nodes -------------------------------------------------------------------------
    def register(self, document: object) -> dict[str, Any]:
        doc = parse_document(document, "registration")
        try:
            body = verify_document(doc, kind=REGISTRATION_KIND)
        except RemoteProtocolError as exc:
            raise Refused(403, str(exc)) from None
        node_id, organisation = body.get("node_id"), body.get("organisation")
        if not isinstance(node_id, str) or not 0 < len(node_id) <= 64 or node_id == COORDINATOR:
            raise Refused(400, "registration.node_id must be a 1-64 character id")
        if organisation is not None and not isinstance(organisation, str):
            raise Refused(400, "registration.organisation must be a string")
        if body.get("public_keys") != base64.b64encode(doc.signer.to_bytes()).decode():
            raise Refused(403, "registration must be signed by the keys it registers")
        try:
            self.store.register_node(node_id, doc.signer.to_bytes(), organisation, doc.to_json())
        except Conflict:
            raise Refused(409, f"node id {node_id!r} is taken by other keys") from None
        self._keys_cache[node_id] = doc.signer
        return {"node_id": node_id, "fingerprint": doc.signer.fingerprint}

    def public_keys(self, node_id: str) -> PublicKeys | None:
        found = self._keys_cache.get(node_id)
        if found is None:
            try:
                found = PublicKeys.from_bytes(self.store.get_node(node_id).public_keys)
            except NotFound:
                return None
            self._keys_cache[node_id] = found
        return found

    # -- artefacts -----------------------------------------------------------------------
    def upload(self, owner: str, data: bytes, media_type: str) -> str:
        """Store an AI provider's initial weights, under its quota; only a weights artefact."""
        try:
            check_weights_artefact(data)
        except RemoteProtocolError as exc:
            raise Refused(400, str(exc)) from None
        count, size = self.upload_quota
        try:
            return self.store.put_upload(data, media_type, owner, max_count=count, max_bytes=size)
        except OverQuota as exc:
            raise Refused(413, str(exc)) from None

    # -- jobs --------------------------------------------------------------------------
    def submit(self, document: object) -> dict[str, Any]:
        doc = parse_document(document, "job")
        try:
            spec = JobSpec.from_document(doc)
        except RemoteProtocolError as exc:
            raise Refused(422 if "signature" not in str(exc) else 403, str(exc)) from None
        try:
            check_tree_feasible(spec, spec.min_consents)
        except ConfigError as exc:
            raise Refused(422, f"with {spec.min_consents} participants: {exc}") from None
        words = _vector_words(spec)
        if words > MAX_PARAMETERS:  # its shares or updates could never be relayed
            raise Refused(
                422, f"a vector of {words:,} words is over the {MAX_PARAMETERS:,} allowed"
            )
        if spec.secure and spec.secure_params().audit:  # nor could its audits' evidence
            tree = spec.secure_params().tree
            # The largest audit message: an accusation, proved by the evidence and a sum.
            need = accusation_bytes(words, k=tree.k, group_size=tree.group_size, fan_in=tree.fan_in)
            if need > ENVELOPE_LIMITS[Kind.ACCUSE]:
                raise Refused(
                    422,
                    f"audit evidence for {words:,} words would reach {need >> 20} MiB "
                    "(in an accusation's proof), "
                    f"over the {ENVELOPE_LIMITS[Kind.ACCUSE] >> 20} MiB an envelope carries: "
                    "lower secure.fan_in or secure.group_size, or set secure.audit = false",
                )
        try:
            read_weights_artefact(
                self.store.get_artefact(spec.weights_sha256), spec.weights_sha256, spec.n_weights
            )
        except NotFound:
            raise Refused(422, f"upload the initial weights {spec.weights_sha256} first") from None
        except RemoteProtocolError as exc:
            raise Refused(422, f"initial weights: {exc}") from None
        try:
            self.store.add_job(spec.job_id, doc.digest, doc.to_json(), spec.min_consents)
        except Conflict:
            raise Refused(409, f"job {spec.job_id!r} exists with another document") from None
        self.store.link_artefacts(spec.job_id, [spec.weights_sha256])  # its parties read it
        self.audits.submitted(spec.job_id, doc)
        return {"job_id": spec.job_id, "digest": doc.digest}

    def job(self, job_id: str) -> JobRecord:
        try:
            return self.store.get_job(job_id)
        except NotFound:
            raise Refused(404, f"unknown job {job_id!r}") from None

    def spec(self, job: JobRecord) -> JobSpec:
        return JobSpec.from_document(SignedDocument.from_json(job.document))

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        driver = self.drivers.get(job_id)
        now = self.clock()
        return {
            "job_id": job.job_id,
            "digest": job.digest,
            "state": job.state,
            "min_consents": job.min_consents,
            "valid_consents": len(self._valid_consents(job, now)),
            "participants": job.participants,
            "current_round": job.current_round,
            "final_weights": job.final_weights,
            "error": job.error or None,
            "beacon": job.beacon,
            "statistics": job.statistics,  # the statistics round's total (an artefact)
            "rounds": [r.to_json() for r in self.store.rounds(job_id)],
            "refused": driver.refusals[-20:] if driver else [],
        }

    # -- consent -------------------------------------------------------------------------
    def consent(self, job_id: str, receipt: object, attestation: object) -> dict[str, Any]:
        """Count a user's consent, with their data provider's attestation of the node.

        Without a valid attestation from the job's data provider the consent
        is refused: a node the provider does not vouch for (a Sybil of the
        coordinator's own making, say) never becomes a participant.
        """
        job = self.job(job_id)
        doc = parse_document(receipt, "receipt")
        user = doc.body.get("user")
        keys = self.public_keys(user) if isinstance(user, str) else None
        if keys is None or not isinstance(user, str):
            raise Refused(403, "the receipt's user is not a registered node")
        if job.state != "waiting" and user not in (job.participants or ()):
            raise Refused(409, f"job {job_id!r} has started: its participants are fixed")
        spec = self.spec(job)
        vouched = parse_document(attestation, "attestation")
        try:
            check_attestation(
                vouched,
                provider=spec.data.provider,
                job_digest=job.digest,
                node=user,
                node_keys=keys,
            )
        except ConsentError as exc:
            raise Refused(403, str(exc)) from None
        try:
            terms = check_consent(
                doc,
                job_id=job_id,
                job_digest=job.digest,
                user=user,
                user_keys=keys,
                fields=spec.data.fields,
                now=self.clock(),
            )
        except ConsentError as exc:
            raise Refused(403, str(exc)) from None
        if any(
            c.digest == doc.digest and c.revoked_at is not None for c in self.store.consents(job_id)
        ):
            raise Refused(403, "consent revoked: this receipt was withdrawn by its user")
        self.store.add_consent(
            job_id,
            user,
            doc.digest,
            document=doc.to_json(),
            expires_at=terms.expires_at,
            attestation=vouched.to_json(),
        )
        self.audits.consented(job_id, user, doc.digest)
        self._start_if_ready(job_id)
        return {"job_id": job_id, "user": user, "receipt": doc.digest}

    def revoke(self, job_id: str, revocation: object, receipt: object) -> dict[str, Any]:
        job = self.job(job_id)
        rev, rec = parse_document(revocation, "revocation"), parse_document(receipt, "receipt")
        user = rec.body.get("user")
        keys = self.public_keys(user) if isinstance(user, str) else None
        if keys is None or not isinstance(user, str) or rev.signer != keys:
            raise Refused(403, "a revocation must be signed by the user who consented")
        try:
            check_consent(
                rec,
                job_id=job_id,
                job_digest=job.digest,
                user=user,
                user_keys=keys,
                now=self.clock(),
                revocations=[rev],
            )
        except ConsentError as exc:
            if "revoked" not in str(exc):
                raise Refused(403, str(exc)) from None
        else:
            raise Refused(400, "the revocation does not revoke that receipt")
        try:
            new = self.store.revoke_consent(job_id, user, rev.to_json(), self.clock())
        except NotFound:
            raise Refused(404, f"{user} has no consent for {job_id}") from None
        driver = self.drivers.get(job_id)
        from_round = 0  # not started: in no round at all
        withdrew = False
        # Not new, yet not withdrawn: the first request stored the revocation, then the
        # database went away before the withdrawal committed (a 503); this retry ends it.
        unfinished = driver is not None and user not in driver.withdrawn() and not driver.finished
        if driver is not None and user in (job.participants or ()) and (new or unfinished):
            from_round = driver.withdraw(NodeId(user))
            driver.wake()
            withdrew = True
        if new or withdrew:
            self.audits.revoked(job_id, user, rec.digest, from_round)
        return {"job_id": job_id, "user": user, "revoked": True}

    # -- the contribution policy's verdicts ------------------------------------------------
    def rate(
        self, job_id: str, round: int, excluded: Mapping[str, str], weights: Mapping[str, float]
    ) -> dict[str, Any]:
        """The job's AI provider's verdicts after valuing ``round``'s group sums: the
        excluded are left out, the rest weighed, from the next round opened.

        Logged as an event (``JobDriver.rate``), so a restart replays them. 409 for a
        job without ``[contributions]``, not running, or a round not closed yet; 422
        for a node that is not a participant. The caller's role is checked before.
        """
        job = self.job(job_id)
        if job.participants is not None:  # fixed at the start: a verdict names only them
            strangers = sorted({*excluded, *weights} - set(job.participants))
            if strangers:
                named = ", ".join(strangers[:5]) + (", ..." if len(strangers) > 5 else "")
                raise Refused(422, f"not participants of job {job_id!r}: {named}")
        if not self.spec(job).config.group_sums:
            raise Refused(409, f"job {job_id!r} has no [contributions]: it takes no verdicts")
        driver = self.drivers.get(job_id)
        if job.state != "running" or driver is None or driver.finished:
            raise Refused(409, f"job {job_id!r} is not running (state {job.state})")
        closed = job.current_round
        if closed is None or round >= closed:
            raise Refused(409, f"round {round} of job {job_id!r} has not closed yet")
        driver.rate(round, excluded, weights)
        driver.wake()
        log.info(
            "%s: verdicts after round %d: %d excluded, %d weighed",
            job_id,
            round,
            len(excluded),
            len(weights),
        )
        return {"job_id": job_id, "round": round, "accepted": True}

    def _valid_consents(self, job: JobRecord, now: float) -> list[str]:
        return sorted(
            {
                c.node_id
                for c in self.store.consents(job.job_id)
                if c.revoked_at is None and c.expires_at > now
            }
        )

    def _start_if_ready(self, job_id: str) -> None:
        with self._lock:
            job = self.store.get_job(job_id)
            if job.state != "waiting":
                return
            participants = self._valid_consents(job, self.clock())
            if len(participants) < job.min_consents:
                return
            organisations = {NodeId(n): self.store.get_node(n).organisation for n in participants}
            try:  # the organisation rule may make a tree impossible that the count allows
                check_tree_feasible(self.spec(job), len(participants), organisations)
            except ConfigError as exc:
                reason = f"waiting: no tree fits these participants' organisations: {exc}"
                if job.error != reason:
                    self.store.update_job(job_id, error=reason)
                    log.warning("%s: %s", job_id, reason)
                return
            self.store.update_job(
                job_id,
                state="running",
                participants=participants,
                started_at=self.clock(),
                current_round=0,
                error="" if job.error else None,  # no longer waiting for a tree
            )
            job = self.store.get_job(job_id)
            self.audits.participants(job_id, participants)
            if self._awaits_beacon(job):  # the trees wait for the participants' secrets
                self._arm_reveal_deadline(job)
                self.signal.notify(participants)  # their polls return: time to reveal
                log.info("%s: participants fixed; waiting for their beacon reveals", job_id)
                return
            self._run_driver(job)

    # -- the tree beacon (jobs.beacon) --------------------------------------------------
    def _awaits_beacon(self, job: JobRecord) -> bool:
        return job.beacon is None and self.spec(job).secure

    def reveal_deadline(self, job: JobRecord) -> float:
        """When a secure job fails for want of reveals: ``reveal_wait`` after its start."""
        return (job.started_at or self.clock()) + self.reveal_wait

    def reveal(self, job_id: str, document: object) -> dict[str, Any]:
        """Take a participant's beacon reveal; the last one fixes the beacon and starts."""
        doc = parse_document(document, "reveal")
        with self._lock:
            job = self.job(job_id)
            node = doc.body.get("node")
            if job.state != "running" or not isinstance(node, str):
                raise Refused(409, f"job {job_id!r} is not collecting beacon reveals")
            if node not in (job.participants or ()):
                raise Refused(403, f"{node!r} is not a participant of {job_id}")
            if not self.spec(job).secure:
                raise Refused(409, f"job {job_id!r} has no trees, hence no beacon")
            if job.beacon is not None:
                return {"job_id": job_id, "node": node, "beacon": job.beacon}
            keys = self.public_keys(node)
            consent = self._consent_of(job_id, node)
            assert keys is not None  # participants are registered nodes
            try:
                committed = check_attestation(
                    None
                    if consent.attestation is None
                    else SignedDocument.from_json(consent.attestation),
                    provider=self.spec(job).data.provider,
                    job_digest=job.digest,
                    node=node,
                    node_keys=keys,
                )
                read_reveal(
                    doc,
                    node=node,
                    node_keys=keys,
                    job_digest=job.digest,
                    committed=committed,
                    roster=roster_digest(job.participants or ()),
                )
            except (ConsentError, RemoteProtocolError) as exc:
                raise Refused(403, str(exc)) from None
            self.store.add_reveal(job_id, node, doc.to_json())
            self._fix_beacon_if_complete(job)
            job = self.store.get_job(job_id)
        return {"job_id": job_id, "node": node, "beacon": job.beacon}

    def _consent_of(self, job_id: str, node: str) -> ConsentRecord:
        found = [c for c in self.store.consents(job_id) if c.node_id == node and c.attestation]
        if not found:
            raise Refused(403, f"{node} holds no attested consent to {job_id}")
        return found[-1]

    def _fix_beacon_if_complete(self, job: JobRecord) -> None:
        """Every participant revealed: fix the beacon, start the rounds."""
        revealed: dict[str, bytes] = {}
        for c in self.store.consents(job.job_id):
            if c.reveal is not None and c.node_id in (job.participants or ()):
                revealed[c.node_id] = bytes.fromhex(str(c.reveal["body"]["secret"]))
        if set(revealed) != set(job.participants or ()):
            return
        beacon = beacon_of(job.digest, revealed).hex()
        self.store.update_job(job.job_id, beacon=beacon)
        self.audits.beacon(job.job_id, beacon)
        timer = self._reveal_timers.pop(job.job_id, None)
        if timer is not None:
            timer.cancel()
        log.info("%s: beacon %s... fixed by %d reveals", job.job_id, beacon[:16], len(revealed))
        self._run_driver(self.store.get_job(job.job_id))

    def _arm_reveal_deadline(self, job: JobRecord) -> None:
        wait = max(0.0, self.reveal_deadline(job) - self.clock())
        timer = threading.Timer(wait, self._reveals_overdue, args=(job.job_id,))
        timer.daemon = True
        self._reveal_timers[job.job_id] = timer
        timer.start()

    def _reveals_overdue(self, job_id: str) -> None:
        """Not everyone revealed in time: the job fails, naming who did not.

        Starting without them would let whoever relays the reveals choose the
        beacon (by dropping some), so the job does not start at all.
        """
        with self._lock:
            job = self.store.get_job(job_id)
            if job.state != "running" or job.beacon is not None:
                return
            revealed = {c.node_id for c in self.store.consents(job_id) if c.reveal is not None}
            silent = sorted(set(job.participants or ()) - revealed)
            reason = (
                f"{len(silent)} participant(s) did not reveal their beacon secret in time "
                f"({', '.join(silent[:5])}{', ...' if len(silent) > 5 else ''}): "
                "the trees cannot be fixed without them"
            )
            self._fail(job_id, reason)

    def _run_driver(self, job: JobRecord) -> None:
        job_id = job.job_id
        with self._lock:
            try:
                driver = self._driver(job)
                driver.start()
            except (ConfigError, RemoteProtocolError) as exc:  # no tree fits; weights don't
                self.drivers.pop(job_id, None)
                self._fail(job_id, str(exc))
                return
            driver.run_in_thread()
            log.info("%s: started with %d participants", job_id, len(job.participants or ()))

    def _driver(self, job: JobRecord) -> JobDriver:
        participants = [NodeId(n) for n in job.participants or ()]
        directory: dict[NodeId, PublicKeys] = {}
        organisations: dict[NodeId, str | None] = {}
        for node in participants:
            record = self.store.get_node(node)
            directory[node] = PublicKeys.from_bytes(record.public_keys)
            organisations[node] = record.organisation
        driver = JobDriver(
            self.store,
            self.spec(job),
            self.keys,
            participants=participants,
            directory=directory,
            organisations=organisations,
            clock=self.clock,
            on_sent=self.signal.notify,
            beacon=bytes.fromhex(job.beacon) if job.beacon else b"",
            audit=self.audits,
            tensors=lambda: self._tensors(job),
        )
        self.drivers[job.job_id] = driver
        return driver

    def participants(self, job_id: str) -> dict[str, Any]:
        """Who takes part: registrations and the data provider's attestations.

        Not the consent receipts: they name each user's id at the provider, which
        is none of the other participants' business (the attestation vouches for
        the consent without naming the user).
        """
        job = self.job(job_id)
        if job.state == "waiting" or job.participants is None:
            raise Refused(409, f"job {job_id!r} has not started: its participants are not fixed")
        consents = {c.node_id: c for c in self.store.consents(job_id)}
        out = []
        for node in job.participants:
            record = self.store.get_node(node)
            out.append(
                {
                    "node_id": node,
                    "organisation": record.organisation,
                    "registration": record.document,
                    "attestation": consents[node].attestation if node in consents else None,
                    "reveal": consents[node].reveal if node in consents else None,
                }
            )
        return {
            "job_id": job_id,
            "beacon": job.beacon,
            "coordinator": base64.b64encode(self.keys.public.to_bytes()).decode(),
            "participants": out,
        }

    # -- mail ----------------------------------------------------------------------------
    def post_mail(self, data: bytes) -> int:
        """Check and store one envelope held whole (a small one; see ``coordinator.intake``
        for one that streams)."""
        with contextlib.suppress(InvalidEnvelope):  # verify_envelope says what is wrong
            self.check_kind_size(peek(data), len(data))
        try:
            head = verify_envelope(
                data, directory=self.directory, expect_job=None, max_bytes=MAX_ENVELOPE_BYTES
            )
        except InvalidEnvelope as exc:
            raise Refused(400 if "signature" not in exc.reason else 403, str(exc)) from None
        return self.store_mail(head, len(data), data=bytes(data))

    @property
    def directory(self) -> Mapping[NodeId, PublicKeys]:
        """The node registry as a mapping, looked up on demand (for envelope checks)."""
        return _Lookup(self.public_keys)

    @staticmethod
    def check_kind_size(head: EnvelopeHeader, size: int) -> None:
        """Each kind's own limit, before the signature is checked (or the body read)."""
        if head.kind in ENVELOPE_LIMITS and size > ENVELOPE_LIMITS[Kind(head.kind)]:
            raise Refused(413, f"a {Kind(head.kind).name.lower()} envelope is too large")

    def check_job_size(self, head: EnvelopeHeader, size: int) -> None:
        """The job's own bound on the kind (from its public document), before the body is
        read: nothing about the job's state is told to a header not yet authenticated.
        A job the relay does not hold is refused here, from the header: its documents
        are public, so that tells nobody anything, and no body is written for it."""
        job = self.job(head.job_id)
        known = head.kind in ENVELOPE_LIMITS
        limit = self._relay_bounds(job).limits.get(Kind(head.kind)) if known else None
        if limit is not None and size > limit:
            name = Kind(head.kind).name.lower()
            raise Refused(413, f"a {name} envelope of this job is at most {limit} bytes")

    def store_mail(
        self,
        head: EnvelopeHeader,
        size: int,
        *,
        data: bytes = b"",
        blob: tuple[str, int] | None = None,
    ) -> int:
        """Store a verified envelope for its recipient: only a kind the job's nodes send, no
        larger than the job's model makes it, of the job's current round, within the
        sender's quota for the round; ``blob``: it lies in the blob folder, (name, size)."""
        job = self.job(head.job_id)
        if job.state != "running" or job.participants is None:
            raise Refused(409, f"job {head.job_id!r} is not running")
        members = set(job.participants)
        if head.sender not in members:
            raise Refused(403, f"{head.sender} is not a participant of {head.job_id}")
        if head.recipient != COORDINATOR and head.recipient not in members:
            raise Refused(400, f"{head.recipient} is not a participant of {head.job_id}")
        if head.kind not in ENVELOPE_LIMITS:  # no party reads it: never store it
            raise Refused(400, f"unknown envelope kind {head.kind}")
        bounds = self._relay_bounds(job)
        self._check_relay(bounds, job, head, size)
        self._check_tree(head)
        try:
            mail_id = self.store.post_message(
                job_id=head.job_id,
                recipient=head.recipient,
                sender=head.sender,
                round=head.round,
                kind=head.kind,
                nonce=head.nonce,
                data=data,
                quota=(bounds.count, bounds.bytes),
                blob=blob,
            )
        except Replayed:
            raise Refused(409, "replayed message: this nonce was already received") from None
        except OverQuota as exc:
            log.warning("%s: %s", head.job_id, exc)
            raise Refused(429, f"quota: {exc}") from None
        if head.recipient == COORDINATOR:
            driver = self.drivers.get(head.job_id)
            if driver is not None:
                driver.wake()
        else:
            self.signal.notify((head.recipient,))
        return mail_id

    def _relay_bounds(self, job: JobRecord) -> RelayBounds:
        """What this job's nodes may send (computed once per job)."""
        found = self._bounds.get(job.job_id)
        if found is None:
            spec = self.spec(job)
            if spec.secure:
                secure = spec.secure_params()
                tree = secure.tree
                found = relay_bounds(
                    _vector_words(spec),
                    secure=True,
                    k=tree.k,
                    group_size=tree.group_size,
                    fan_in=tree.fan_in,
                    audit=secure.audit,
                    group_sums=secure.group_sums,
                )
            else:
                found = relay_bounds(spec.n_weights, secure=False, audit=False)
            self._bounds[job.job_id] = found
        return found

    @staticmethod
    def _check_relay(bounds: RelayBounds, job: JobRecord, head: EnvelopeHeader, size: int) -> None:
        """Only what the job's current round expects from a node, no larger than its model."""
        kind, recipient, round = Kind(head.kind), head.recipient, head.round
        name = kind.name.lower()
        if kind not in bounds.limits:
            raise Refused(403, f"a node sends no {name} envelopes in job {job.job_id!r}")
        to_coordinator = recipient == COORDINATOR
        if (kind in TO_COORDINATOR_ONLY and not to_coordinator) or (
            kind in TO_NODE_ONLY and to_coordinator
        ):
            raise Refused(400, f"a {name} envelope never goes to {recipient}")
        if size > bounds.limits[kind]:
            raise Refused(
                413, f"a {name} envelope of this job is at most {bounds.limits[kind]} bytes"
            )
        if round != job.current_round:
            raise Refused(409, f"round {round} is not the job's current round {job.current_round}")

    def _check_tree(self, head: EnvelopeHeader) -> None:
        """Only between roles the open round's tree gives (who may send this kind to whom)."""
        driver = self.drivers.get(head.job_id)
        if driver is not None:
            problem = driver.relay_problem(head.sender, head.recipient, Kind(head.kind))
            if problem is not None:
                raise Refused(403, f"the round's tree expects no such envelope: {problem}")

    def mail_for(self, node: str, after: int) -> list[MailItem]:
        """A node's next envelopes; those in blobs without their bytes (the API streams
        the files). At most ``MAIL_BATCH_BYTES`` a batch but never fewer than one
        envelope: a node reads a batch whole, so it holds one large envelope at a time."""
        return self.store.messages_for(node, after, load=False, max_bytes=MAIL_BATCH_BYTES)


class _Lookup(Mapping[NodeId, PublicKeys]):
    """The node registry as a mapping, looked up on demand (for envelope checks)."""

    def __init__(self, find: Callable[[str], PublicKeys | None]) -> None:
        self._find = find

    def __getitem__(self, key: NodeId) -> PublicKeys:
        found = self._find(key)
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[NodeId]:
        raise TypeError("the registry is looked up, never listed, here")

    def __len__(self) -> int:
        raise TypeError("the registry is looked up, never counted, here")


def _vector_words(spec: JobSpec) -> int:
    """The longest vector the job's nodes share: the model's with its quality words, or a
    statistics round's."""
    if not spec.secure:
        return spec.n_weights
    secure = spec.secure_params()
    lengths = secure.statistics.lengths if secure.statistics is not None else ()
    return max((spec.n_weights + secure.quality, *lengths))
