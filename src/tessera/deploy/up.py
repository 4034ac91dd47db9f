"""``tessera up``: run a job through a real local deployment, end to end.

The AI provider's part happens here: it builds the feature encoding from the
data provider's public catalogue (a secure job, whose statistics rounds fit
every number; a job the schema cannot encode stops, naming why) or asks the
provider's aggregates endpoint (a plaintext or image job, which has no
statistics rounds), signs and submits the job, then watches the rounds and
scores each aggregated model on its own held-out data, writing the same
DIR/metrics.json, model.safetensors and curves.png as ``tessera run``, and
and DIR/audit.jsonl: the coordinator's signed log of the job, fetched (``UpAudit``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

from tessera.ai_provider.client import (
    build_job,
    fetch_preprocessing,
    fetch_provider_key,
    fetch_schema,
    schema_preprocessing,
    submit,
    watch,
)
from tessera.config import JobConfig
from tessera.crypto.documents import SignedDocument
from tessera.data.prepare import Preprocessor
from tessera.data.statistics import Totals
from tessera.deploy.local import PROVIDER_DATASET, Deployment
from tessera.errors import ConfigError, RemoteProtocolError, TesseraError
from tessera.jobs.document import JobSpec, check_tree_feasible
from tessera.jobs.groupsums import group_floor, read_group_sums
from tessera.jobs.prepared import rescale_job
from tessera.jobs.records import BaselineResult, RoundRecord
from tessera.jobs.secure import secure_params
from tessera.jobs.totals import read_statistics_document
from tessera.jobs.valuation import GroupValuer
from tessera.protocol.limits import TAIL
from tessera.runtime.transport.client import CoordinatorClient, ServiceRefused
from tessera.storage.keyfile import load_keys
from tessera.storage.private import private_dir, write_private
from tessera.training import evaluate
from tessera.weights import Vector

log = logging.getLogger("tessera.deploy.up")
_T = TypeVar("_T")


def with_declared_weight(cfg: JobConfig, max_weight: float) -> JobConfig:
    """A deployed secure job must declare where node weights saturate (nodes can't know)."""
    if cfg.secure.max_weight is not None:
        return cfg
    secure = cfg.secure.model_copy(update={"max_weight": max_weight})
    return cfg.model_copy(update={"secure": secure})


class PartyDied(RuntimeError):
    """A party the job cannot go on without ended: its name, status and log's end."""


class Lookout:
    """Called at each status poll: reports each party process that ended badly, once."""

    def __init__(self, dep: Deployment, on_exit: Callable[[str], None] | None) -> None:
        self.dep, self.on_exit = dep, on_exit
        self.seen: set[str] = set()

    def __call__(self, _status: object = None) -> None:
        for proc in self.dep.exited():
            if proc.name in self.seen:
                continue
            self.seen.add(proc.name)
            if proc.name == "coordinator":
                raise PartyDied(f"the job cannot go on: {proc.how_it_ended()}")
            if proc.popen.returncode != 0 and self.on_exit is not None:  # 0: a node done
                self.on_exit(proc.how_it_ended(lines=5))


class StartFailed(RuntimeError):
    """The job never started: a party's process ended first, or the start timed out."""


def start_nodes(
    dep: Deployment,
    client: CoordinatorClient,
    job_id: str,
    *,
    timeout: float | None = 600.0,
    batch: int | None = None,
    poll: float = 0.5,
    on_consents: Callable[[str, int, int], None] | None = None,
) -> None:
    """Start the node processes and wait until the job starts (all of them consented).

    ``batch`` nodes start at a time (None: all at once), the next batch once
    the coordinator holds every started node's consent: on a few cores,
    dozens of sandboxes loading torch at once can each miss their own start
    timeout. A process (node, provider or coordinator) that ends before the job
    starts, or a start slower than ``timeout`` seconds in all, is a
    ``StartFailed`` naming the party and quoting its log. ``on_consents`` hears
    (job id, nodes consented, nodes started) whenever either changes.
    """
    if batch is not None and batch < 1:
        raise ValueError(f"start batch must be positive, got {batch}")
    step = batch or dep.n_nodes
    wait = _StartWait(dep, client, job_id, timeout=timeout, poll=poll, on_consents=on_consents)
    while wait.started < dep.n_nodes:
        for i in range(wait.started, min(wait.started + step, dep.n_nodes)):
            dep.start_node(i, job_id)
        wait.started = min(wait.started + step, dep.n_nodes)
        # The last batch waits for the job itself, not just for the consents.
        wait.until(None if wait.started == dep.n_nodes else wait.started)


class _StartWait:
    """Watches a job's start: consents, the parties' processes, the deadline."""

    def __init__(
        self,
        dep: Deployment,
        client: CoordinatorClient,
        job_id: str,
        *,
        timeout: float | None,
        poll: float,
        on_consents: Callable[[str, int, int], None] | None,
    ) -> None:
        self.dep, self.client, self.job_id = dep, client, job_id
        self.timeout, self.poll, self.on_consents = timeout, poll, on_consents
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.started = 0
        self.consented = 0
        self._heard: tuple[int, int] | None = None

    def until(self, need: int | None) -> None:
        """Until ``need`` consents are in (None: until the job left its waiting state)."""
        while True:
            if self._ended():
                return
            status = self.client.status(self.job_id)
            self.consented = int(status.get("valid_consents", 0))
            if status["state"] != "waiting" or (need is not None and self.consented >= need):
                return
            if self.on_consents is not None and self._heard != (self.consented, self.started):
                self._heard = (self.consented, self.started)
                self.on_consents(self.job_id, self.consented, self.started)
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise StartFailed(
                    f"job {self.job_id} did not start within {self.timeout:.0f} s: "
                    f"{self.consented} of {self.dep.n_nodes} nodes consented "
                    f"({self.started} started); the node logs in {self.dep.out / 'logs'} "
                    "say how far each got (more time: tessera up --start-timeout; "
                    "slow sandbox starts: --sandbox-start-timeout, or --start-batch)"
                )
            time.sleep(self.poll)

    def _ended(self) -> bool:
        """True if the job started meanwhile; ``StartFailed`` if a party's process ended."""
        ended = self.dep.exited()
        if not ended:
            return False
        services = [p for p in ended if p.name in ("coordinator", "provider")]
        # A node that ends once the job runs is the job's business (a dropout).
        if not services and self.client.status(self.job_id)["state"] != "waiting":
            return True
        first = (services or ended)[0]
        others = [p.name for p in ended if p is not first]
        more = f" (also ended: {', '.join(others)})" if others else ""
        raise StartFailed(
            f"job {self.job_id} cannot start: {first.how_it_ended()}\n"
            f"{self.consented} of {self.dep.n_nodes} nodes had consented{more}; "
            f"all logs are in {self.dep.out / 'logs'}"
        )


@dataclass
class UpResult:
    job_id: str
    rounds: list[RoundRecord]
    weights: Vector
    seconds: float
    contributions: dict[str, object] | None = None  # metrics.json's, as ``tessera run``'s


class Valuation:
    """The AI provider's contribution indicator in a deployment (``[contributions]``).

    Each round's record names its group-sum artefact, which only the job's AI
    provider may read: it is fetched (hash-checked, every group at least the
    job's floor), valued on the AI provider's own validation rows by the
    simulator's ``GroupValuer`` from the model the round started from, and the
    policy's verdicts are posted back (``POST /v1/jobs/{id}/verdicts``): the
    coordinator applies them from the next round it opens.
    """

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.valuer: GroupValuer | None = None
        self.length = 0  # words of a group's sum, once the valuer is built
        self.start = dep.job.initial_weights  # the model the next round trains from
        self.posted = 0

    def round(
        self, client: CoordinatorClient, job_id: str, rec: RoundRecord, weights: Vector
    ) -> None:
        """Value ``rec``'s groups (if it disclosed any) and post the verdicts, if new ones."""
        start, self.start = self.start, weights
        if rec.group_sums is None:
            return
        job = self.dep.job
        c = job.config.contributions
        assert c is not None
        if self.valuer is None:  # now: a secure job's encoding is refitted by round 1
            self.valuer = GroupValuer(
                job, method=c.method, permutations=c.permutations, policy=c.policy
            )
            # A group's sum: the update, the quality words, the tail (the job fixes it).
            self.length = len(job.initial_weights) + secure_params(job).quality + TAIL
        sha = rec.group_sums
        _, groups = read_group_sums(
            client.get_artefact(sha),
            sha,
            length=self.length,
            min_group=group_floor(job.config),
        )
        verdicts = self.valuer(rec.round, groups, start)
        if verdicts is None:
            return
        try:
            client.post_verdicts(
                job_id,
                rec.round,
                excluded={str(n): why for n, why in verdicts.excluded.items()},
                weights={str(n): f for n, f in verdicts.weights.items()},
            )
        except ServiceRefused as exc:
            if exc.status != 409:  # 409: the job ended meanwhile, nothing left to apply to
                raise
            log.info("verdicts after round %d not taken: %s", rec.round, exc)
            return
        self.posted += 1

    def entry(self) -> dict[str, object] | None:
        return None if self.valuer is None else self.valuer.entry()


def signed_job(dep: Deployment, cfg: JobConfig) -> tuple[SignedDocument, bytes]:
    """The AI provider's signed job and initial weights, kept in ``run/job.json``; checked
    against the organisations before any node starts. ``dep`` learns what privacy the
    signed job calibrated (over every release, a statistics round's too)."""
    keys = dep.ai_provider_keys
    if federated_statistics(cfg):  # the schema fixes the width, the statistics the numbers
        schema = fetch_schema(dep.provider_url, PROVIDER_DATASET, verify=dep.verify)
        preprocessing, why = schema_preprocessing(cfg, schema)
        if preprocessing is None:  # no plaintext statistics of a secure job's data
            raise ConfigError("data", f"the provider's schema cannot encode this job: {why}")
    else:
        log.info("a plaintext or image job's encoding comes from the provider's aggregates")
        preprocessing = fetch_preprocessing(
            cfg, dep.provider_url, PROVIDER_DATASET, keys=keys, verify=dep.verify
        )
    column = cfg.partition.column
    assert column is not None  # Deployment checked it
    doc, weights = build_job(
        cfg,
        keys,
        provider=fetch_provider_key(dep.provider_url, verify=dep.verify),
        dataset=PROVIDER_DATASET,
        user_field=column,
        preprocessing=preprocessing,
        min_consents=dep.n_nodes,
        purpose=f"train {cfg.job.name}: {cfg.job.task} of {cfg.data.target}",
        statistics=federated_statistics(cfg),
    )
    # The signed job, kept beside the run: what the model's provenance points to.
    write_private(dep.out / "run" / "job.json", json.dumps(doc.to_json(), indent=1))
    # Before any node starts, with the organisations the job's organisation_column gives.
    orgs = dep.job.organisations or (None,) * dep.n_nodes
    nodes = dict(zip(dep.job.node_ids, orgs, strict=True))
    spec = JobSpec.from_document(doc)
    check_tree_feasible(spec, dep.n_nodes, nodes)
    learn_privacy(dep, spec)
    return doc, weights


def learn_privacy(dep: Deployment, spec: JobSpec) -> None:
    """What the nodes will add: calibrated over every release, statistics rounds too."""
    if spec.secure:
        params = spec.secure_params()
        dep.privacy = params.privacy
        dep.statistics_rounds = params.statistics.rounds if params.statistics else 0


# -- resuming a stopped deployment ----------------------------------------------------------

#: What ``tessera up`` was asked, kept in OUT so ``tessera up --resume OUT`` asks it again.
UP_ARGS = Path("run") / "up.json"


@dataclass(frozen=True)
class UpOptions:
    """The deployment's options, as ``tessera up`` was given them."""

    nodes: int
    tls: bool
    db_url: str | None
    records: str
    sandbox_start_timeout: float | None
    node_max_parameters: int | None
    ask_consent: int = 0  # the first K nodes consent on their user's page
    node_memory: int | None = None  # bytes: every node's sandbox memory limit


def save_up_args(out: Path, cfg: JobConfig, options: UpOptions) -> None:
    """OUT/run/up.json: the job file as read (every field) and the deployment's options."""
    body = {"config": cfg.model_dump(mode="json"), "options": asdict(options)}
    private_dir((out / UP_ARGS).parent)
    write_private(out / UP_ARGS, json.dumps(body, indent=1))


def load_up_args(out: Path) -> tuple[JobConfig, UpOptions]:
    """The job and options of the stopped deployment in ``out``; ``ConfigError`` saying
    why it cannot be resumed."""
    path = out / UP_ARGS
    if not path.is_file():
        raise ConfigError("resume", f"{out} holds no tessera up run to resume (no {UP_ARGS})")
    if not (out / "run" / "job.json").is_file():
        raise ConfigError(
            "resume", f"the job in {out} was never submitted: start it afresh, without --resume"
        )
    body = json.loads(path.read_text(encoding="utf-8"))
    return JobConfig.model_validate(body["config"]), UpOptions(**body["options"])


def submitted_job(dep: Deployment) -> SignedDocument:
    """The signed job a stopped deployment submitted (OUT/run/job.json)."""
    doc = SignedDocument.from_json(json.loads((dep.out / "run" / "job.json").read_text()))
    if doc.signer != dep.ai_provider_keys.public:
        raise ConfigError("resume", "run/job.json is not signed by this deployment's AI provider")
    learn_privacy(dep, JobSpec.from_document(doc))
    return doc


def run_job(
    dep: Deployment,
    *,
    on_round: Callable[[RoundRecord, Vector], None] | None = None,
    on_started: Callable[[str], None] | None = None,
    on_consents: Callable[[str, int, int], None] | None = None,
    on_exit: Callable[[str], None] | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
    start_timeout: float | None = 600.0,
    start_batch: int | None = None,
    resume: bool = False,
) -> UpResult:
    """Start the services, submit the job, start the nodes, and watch it to its end.

    ``resume``: the job was submitted by an earlier run in the same folder, which
    stopped; the coordinator picks it up from its store (event replay), the nodes
    from their state folders, and every round so far is read back again.

    ``start_timeout`` bounds the start (from the job's submission to its
    first round) and ``start_batch`` staggers the nodes: see ``start_nodes``.
    ``timeout`` bounds the watch once the job runs. A party whose process fails
    meanwhile is told to ``on_exit`` (its name, status and the end of its log);
    the coordinator's end is ``PartyDied`` at once, not after the client's patience.
    """
    from tessera.runtime.sim.job import holdout_scores  # the simulator's evaluation, exactly

    t0 = time.monotonic()
    cfg = with_declared_weight(dep.config, float(dep.job.node_samples.max()))
    dep.config = cfg
    dep.start_coordinator()
    dep.start_provider()
    doc, weights = (submitted_job(dep), b"") if resume else signed_job(dep, cfg)
    if len(dep.job.test.y):  # load the evaluation path (torch) now, not as round 1 closes
        evaluate(
            dep.job.spec, dep.job.initial_weights, dep.job.test.x, dep.job.test.y, dep.job.task
        )
    with dep.client() as client:
        if resume:
            job_id = JobSpec.from_document(doc).job_id
            client.status(job_id)  # 404 if this coordinator's store lost it: said at once
        else:
            job_id = submit(client, doc, weights)["job_id"]
        if on_started is not None:
            on_started(job_id)
        start_nodes(
            dep,
            client,
            job_id,
            timeout=start_timeout,
            batch=start_batch,
            poll=poll,
            on_consents=on_consents,
        )
        records: list[RoundRecord] = []
        last = started = time.monotonic()
        final = dep.job.initial_weights
        valuation = Valuation(dep) if cfg.group_sums else None
        lookout = Lookout(dep, on_exit)
        for result in watch(client, job_id, timeout=timeout, poll=poll, on_status=lookout):
            now = time.monotonic()
            rec = result.record
            if federated_statistics(cfg) and dep.job.statistics_vectors is None:
                encoding = JobSpec.from_document(doc).preprocessor()  # what the nodes refit
                totals, counted = statistics_totals(client, job_id, encoding)
                dep.job = rescale_job(dep.job, totals, encoding, nodes=counted)
            score = holdout_scores(dep.job, result.weights)
            # A deployment's clock is the real one: time since the job started, as
            # the simulator's virtual_seconds, and this round's own duration.
            record = replace(
                rec,
                value=score.value,
                rmse=score.rmse,
                mae=score.mae,
                # A node that declined said why (rec.declined); the rest did not answer.
                dropped=len(rec.declined),
                late=max(rec.selected - rec.participants - len(rec.declined), 0),
                seconds=now - last,
                virtual_seconds=now - started,
                virtual_round_seconds=now - last,
            )
            last, final = now, result.weights
            if valuation is not None:
                valuation.round(client, job_id, rec, result.weights)
            records.append(record)
            if on_round is not None:
                on_round(record, result.weights)
    contributions = None if valuation is None else valuation.entry()
    return UpResult(job_id, records, final, time.monotonic() - t0, contributions)


class UpAudit:
    """A deployment's DIR/audit.jsonl: the coordinator's log of the job, which it signs
    and writes as the job's events happen (``coordinator.audit_log``), fetched here
    (``GET /v1/jobs/{id}/audit``, as the job's AI provider) after each round and at the
    end. DIR/audit.key.pub repeats the coordinator's signing key (from its key file in
    the deployment) for convenience: a verifier should take it from the coordinator,
    not from DIR. ``started`` and ``round`` wrap the callbacks of ``run_job``."""

    def __init__(self, dep: Deployment, out: Path, *, wait: float = 30.0) -> None:
        self.dep, self.out, self.wait = dep, out, wait
        self.job_id: str | None = None

    def started(self, then: Callable[[str], None]) -> Callable[[str], None]:
        def opened(job_id: str) -> None:
            keys = load_keys(
                self.dep.out / "keys" / "coordinator.key", self.dep.passphrase, warn_clear=False
            )
            key = keys.public.signing.hex() + "\n"
            (self.out / "audit.key.pub").write_text(key, encoding="ascii")
            self.job_id = job_id
            then(job_id)

        return opened

    def round(
        self, then: Callable[[RoundRecord, Vector], None]
    ) -> Callable[[RoundRecord, Vector], None]:
        def recorded(rec: RoundRecord, weights: Vector) -> None:
            self.fetch()
            then(rec, weights)

        return recorded

    def fetch(self) -> bytes:
        """The coordinator's log as it is now, written to DIR/audit.jsonl (whole lines)."""
        if self.job_id is None:
            return b""
        with self.dep.client() as client:
            data = client.audit_log(self.job_id)
        write_private(self.out / "audit.jsonl", data)
        return data

    def finish(self, metrics: _T, *, rounds: int, status: str = "finished") -> _T:  # noqa: ARG002
        """The log once it holds the final record (the coordinator writes it just after
        the job's end is stored, so it may lag the status by a moment); ``metrics``
        (metrics.json's last content) passes through. ``rounds`` and ``status`` are the
        coordinator's to say: its record says them."""
        deadline = time.monotonic() + self.wait
        while self.job_id is not None:
            data = self.fetch()
            last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
            if b'"kind":"model_final"' in last:
                break
            if time.monotonic() > deadline:
                log.warning("the coordinator's log of %s has no final record yet", self.job_id)
                break
            time.sleep(0.2)
        return metrics


def page_link(dep: Deployment) -> str:
    """A one-time login link to the coordinator's pages for the deployment's AI provider
    (or why there is none: the pages are a convenience, never a reason to stop)."""
    try:
        with dep.client(patience=10.0) as client:
            return client.page_link()
    except (TesseraError, OSError) as exc:
        log.warning("no link to the pages: %s", exc)
        return f"(none: {exc})"


def upload_report(dep: Deployment, job_id: str, report: Path) -> None:
    """Upload DIR/report.html to the coordinator (the job's pages show it); a failure is
    logged, never fatal: the file is in DIR either way."""
    if not report.exists():
        return
    try:
        with dep.client(patience=10.0) as client:
            client.put_report(job_id, report.read_bytes())
    except (TesseraError, OSError) as exc:
        log.warning("report.html not uploaded to the coordinator: %s", exc)


def baseline_of(dep: Deployment) -> BaselineResult | None:
    if not dep.config.baseline.enabled:
        return None
    from tessera.runtime.sim.job import centralized

    return centralized(dep.job)


def default_out(config: Path) -> Path:
    return Path("runs") / f"up-{config.stem}"


def federated_statistics(cfg: JobConfig) -> bool:
    """Whether ``tessera up`` opens the job with a statistics round: every secure job
    but an image one (its one global scale is not refitted yet)."""
    return cfg.secure.enabled and not cfg.data.image_shape


def statistics_totals(
    client: CoordinatorClient, job_id: str, encoding: Preprocessor
) -> tuple[list[Totals], int]:
    """The totals of the job's statistics rounds, as the coordinator keeps them, and how
    many nodes the last one holds."""
    sha = client.status(job_id).get("statistics")
    plans = encoding.statistics_plans()
    totals = (
        read_statistics_document(client.get_artefact(sha), plans) if isinstance(sha, str) else []
    )
    if len(totals) != len(plans):
        raise RemoteProtocolError(
            f"job {job_id} trains with {len(totals)} of its {len(plans)} statistics totals"
        )
    return [t for t, _ in totals], totals[-1][1]
