"""One running job on the coordinator: the machine, its event log, its timers.

Theory of operation (event sourcing)
------------------------------------
The coordinator machine is a deterministic function of the events it was
fed and the ``now`` each came with. So the driver persists *events*, not
machine state: each step (a mailbox envelope for the coordinator, a timer,
a consent withdrawal, the AI provider's verdicts, the start) is written to
the store in one transaction together with everything it caused: the envelopes it sends, the round
record and the new model. Killed at any point, the coordinator restarts by
feeding a fresh machine the logged events in order with their logged
``now`` (discarding the effects, which were committed with them), re-arms
the timers still pending, and carries on from the first unconsumed
envelope. A step that did not commit never happened: its envelope is still
unconsumed and its timer still pending, so it runs again.

The same holds without a restart. A step whose commit fails because the
database is away (``Unavailable``: a PostgreSQL restart or crash) has already
moved the machine in memory, ahead of the log; the driver throws that machine
away and rebuilds it from the store, exactly as a restart would, once the
database answers again. Until then it retries with a growing pause, logging
the outage once and its end once.

Sealing draws fresh randomness, so re-sent envelopes would differ in bytes;
that is why effects are never re-sent on recovery, only rebuilt state is.

Retention: the mailbox keeps a job's mail of the current round and the one
before it. When round r closes, mail of rounds before r is deleted in the
same commit (a restart replays from the snapshot taken at r's close, so it
reads only mail of rounds r and r+1; round r's is kept for its late
envelopes' refusals and its traffic count); when the job ends, all of its
mail is. The relay takes only the current round's mail
(``CoordinatorService.post_mail``), so deleted rounds never come back.

The machine sits in a ``runtime.host.Host``, the one the simulator and the
node agent use: the driver is its outbox and observer (what a step causes
is gathered for its commit), and the host owns the timers, so recovery is
``Host.replay`` of each logged event.

The job's audit log (``coordinator.audit_log``) hears of each step after its
commit: the rounds it closed (with a secure round's commitments), the tree of
each round it opened, the job's end. Replayed steps write nothing; what a
crash kept from the log is re-derived from the store on restart (``catch_up``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tessera.coordinator.audit_log import AuditLogs, commitments_digest
from tessera.coordinator.snapshots import DriverState, decode_snapshot, encode_snapshot
from tessera.crypto.envelope import ReplayGuard
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.jobs.document import JobSpec
from tessera.jobs.groupsums import GROUP_SUMS_MEDIA_TYPE, group_sums_artefact
from tessera.jobs.records import RoundRecord, quality_fields, tree_fields
from tessera.jobs.totals import append_total
from tessera.protocol import Coordinator, SecureCoordinator
from tessera.protocol.coordinator import CoordinatorSnapshot
from tessera.protocol.effects import (
    JobFinished,
    Rejected,
    RoundClosed,
    Send,
    StatisticsClosed,
)
from tessera.protocol.events import (
    ContributorsRated,
    Event,
    JobStarted,
    ParticipantWithdrawn,
    TimerFired,
)
from tessera.protocol.kinds import Kind
from tessera.protocol.timers import Timer, parse_timer, timer_text
from tessera.protocol.topology import Tree
from tessera.runtime.host import Host, Observer, WallClock
from tessera.runtime.transport.mail import (
    WEIGHTS_MEDIA_TYPE,
    from_envelope,
    read_weights_artefact,
    to_envelope,
    weights_artefact,
)
from tessera.storage import EventRecord, MailItem, NotFound, Store, Unavailable
from tessera.weights import Vector

log = logging.getLogger("tessera.coordinator")
_ALL_ROUNDS = 2**31 - 1  # past any round: all of a finished job's mail
_RETRY_FIRST, _RETRY_MAX = 0.25, 5.0  # seconds between tries while the database is away


@dataclass
class _Step:
    """What one event caused, gathered for a single commit."""

    outgoing: list[dict[str, Any]] = field(default_factory=list)
    artefacts: dict[str, bytes] = field(default_factory=dict)  # weights
    documents: dict[str, bytes] = field(default_factory=dict)  # JSON artefacts
    group_sums: dict[str, bytes] = field(default_factory=dict)  # for the AI provider only
    rounds: list[RoundRecord] = field(default_factory=list)
    job_update: dict[str, Any] | None = None
    rejected: list[str] = field(default_factory=list)
    snapshot: bytes | None = None
    weights: dict[int, Vector] = field(default_factory=dict)  # each closed round's model
    finished: JobFinished | None = None


class JobDriver(Observer):
    """Feeds one job's coordinator machine and commits each step; see the module doc."""

    def __init__(
        self,
        store: Store,
        spec: JobSpec,
        keys: NodeKeys,
        *,
        participants: Sequence[NodeId],
        directory: Mapping[NodeId, PublicKeys],
        organisations: Mapping[NodeId, str | None],
        clock: Callable[[], float] = time.time,
        on_sent: Callable[[list[str]], None] | None = None,
        beacon: bytes = b"",
        audit: AuditLogs | None = None,
        tensors: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        """``beacon``: a secure job's tree beacon, fixed by the participants' reveals;
        ``audit``: the coordinator's audit logs; ``tensors``: the model's tensor names in
        layout order (the final record names them)."""
        self.audit, self.tensors = audit, tensors
        self.store = store
        self.spec = spec
        self.keys = keys
        self.job_id = spec.job_id
        self.directory = dict(directory)
        self.directory[COORDINATOR] = keys.public
        self.clock = clock
        self.on_sent = on_sent
        self.seq = 0
        self.cursor = 0  # highest mailbox id looked at
        self.finished = False
        self.replayed = 0  # events the last recovery replayed
        self.refusals: list[str] = []  # recent refusals, for status and logs
        self._replay = ReplayGuard()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        initial = read_weights_artefact(
            store.get_artefact(spec.weights_sha256), spec.weights_sha256, spec.n_weights
        )
        # How to build the machine, fresh or from a snapshot (same arguments both ways).
        self._kind: type[Coordinator] = SecureCoordinator if spec.secure else Coordinator
        self._args = (spec.round_params(), list(participants), initial, spec.strategy)
        self._kwargs: dict[str, Any] = (
            {
                "secure": replace(spec.secure_params(), beacon=beacon),
                "keys": keys,
                "directory": self.directory,
                "organisations": dict(organisations),
            }
            if spec.secure
            else {}
        )
        self.machine = self._build()
        self._current = _Step()  # what the step being run causes
        self.host = self._host()
        self._stale = False  # a step failed to commit: the machine is ahead of the log

    def _host(self) -> Host:
        return Host(
            COORDINATOR,
            self.machine,
            outbox=self,
            clock=WallClock(self.clock),
            job_seed=self.spec.config.job.seed,
            observer=self,
        )

    def _build(self, snapshot: CoordinatorSnapshot | None = None) -> Coordinator:
        params, participants, initial, strategy = self._args
        args = (params, participants, initial, strategy())  # a fresh strategy each time
        if snapshot is None:
            return self._kind(*args, **self._kwargs)
        return self._kind.restore(snapshot, *args, **self._kwargs)

    # -- recovery --------------------------------------------------------------
    def recover(self) -> int:
        """Rebuild the machine: the newest snapshot, then the events logged after it.

        Returns how many events were replayed, which the snapshots bound by about
        one round's worth whatever the job's age.
        """
        after = -1
        latest = self.store.latest_snapshot(self.job_id)
        if latest is not None:
            after, data = latest
            state = decode_snapshot(data)
            self.machine = self._build(state.machine)
            self.host.machine = self.machine
            self.host.restore_timers(state.timers)
            self.seq, self.cursor = after + 1, state.cursor
        events = self.store.events(self.job_id, after=after)
        for record in events:
            if record.seq != self.seq:
                raise RuntimeError(f"event log of {self.job_id} has a gap at {self.seq}")
            event = self._event_of(record)
            effects = self.host.replay(event, record.now) if event is not None else []
            if any(isinstance(e, JobFinished) for e in effects):
                self.finished = True
            self.seq += 1
            if record.mail_id is not None:
                self.cursor = max(self.cursor, record.mail_id)
        self.replayed = len(events)
        return self.replayed

    def _reload(self) -> None:
        """After a step that did not commit: a fresh machine, host and replay guard,
        recovered from the store as at a restart (raises while the database is away)."""
        self._replay = ReplayGuard()
        self.machine = self._build()
        self.host = self._host()
        self.seq, self.cursor, self.finished = 0, 0, False
        self.recover()
        self._stale = False

    def _event_of(self, record: EventRecord) -> Event | None:
        if record.kind == "start":
            return JobStarted()
        if record.kind == "timer":
            assert record.timer is not None
            return TimerFired(timer=parse_timer(record.timer))
        if record.kind == "withdraw":
            assert record.node is not None
            return ParticipantWithdrawn(node=NodeId(record.node))
        if record.kind == "rate":
            assert record.payload is not None
            return verdicts_event(record.payload)
        if record.kind == "mail":
            assert record.mail_id is not None
            try:
                item = self.store.get_message(record.mail_id)
            except NotFound:  # an old round's, deleted: the machine refused it when live
                return None
            return self._decode(item)
        raise RuntimeError(f"unknown event kind {record.kind!r} in the log")

    def _decode(self, item: MailItem) -> Event | None:
        try:
            return from_envelope(
                item.data,
                me=COORDINATOR,
                job_id=self.job_id,
                keys=self.keys,
                directory=self.directory,
                replay=self._replay,
            )
        except RemoteProtocolError as exc:
            self._note(f"refused {item.sender}: {exc}")
            return None

    # -- live steps --------------------------------------------------------------
    def start(self) -> None:
        """Log and run JobStarted (only for a job with an empty log)."""
        with self._lock:
            self._rebuild_if_stale()
            if self.seq == 0:
                self._step(EventRecord(self.job_id, 0, "start", self.clock()), JobStarted())

    def withdraw(self, node: NodeId) -> int:
        """Leave ``node`` out; returns the first round it is in no more (the round open
        now may still take its update)."""
        with self._lock:
            self._rebuild_if_stale()
            record = EventRecord(self.job_id, self.seq, "withdraw", self.clock(), node=node)
            self._step(record, ParticipantWithdrawn(node=node))
            return self.machine.round + 1

    def withdrawn(self) -> frozenset[str]:
        """The participants the machine has left out for a revoked consent."""
        return frozenset(self.machine.withdrawn)

    def rate(self, round: int, excluded: Mapping[str, str], weights: Mapping[str, float]) -> None:
        """Log and run the AI provider's verdicts after its valuation of ``round``: the
        machine leaves the excluded out and weighs the rest from the next round opened."""
        payload = {"round": round, "excluded": dict(excluded), "weights": dict(weights)}
        with self._lock:
            self._rebuild_if_stale()
            record = EventRecord(self.job_id, self.seq, "rate", self.clock(), payload=payload)
            self._step(record, verdicts_event(payload))

    def poll(self) -> bool:
        """Run every due timer and every new envelope for us; True if anything ran."""
        ran = False
        with self._lock:
            self._rebuild_if_stale()
            now = self.clock()
            for timer in self.host.due(now):
                if timer in self.host.timers and not self.finished:
                    name = timer_text(timer)
                    record = EventRecord(self.job_id, self.seq, "timer", now, timer=name)
                    self._step(record, TimerFired(timer=timer))
                    ran = True
            while not self.finished:
                items = self.store.messages_for(COORDINATOR, self.cursor, limit=64)
                if not items:
                    break
                for item in items:
                    self.cursor = item.id
                    if item.job_id != self.job_id:
                        continue
                    record = EventRecord(self.job_id, self.seq, "mail", self.clock(), item.id)
                    self._step(record, self._decode(item))
                    ran = True
        return ran

    def next_timer(self) -> float:
        return self.host.next_timer()

    def _rebuild_if_stale(self) -> None:
        """Rebuild the machine if a step failed to commit (under the lock, before a step)."""
        if self._stale:
            self._reload()

    def _step(self, record: EventRecord, event: Event | None) -> None:
        try:
            self._run_step(record, event)
        except Unavailable:  # the machine moved, the log did not (or it may have: a
            self._stale = True  # connection lost in COMMIT): the store says which
            raise

    def _run_step(self, record: EventRecord, event: Event | None) -> None:
        step = self._current = _Step()
        held = self._open_round()  # the round this step may close, its commitments live
        if isinstance(event, TimerFired):
            self.host.fire(event.timer, record.now)
        elif event is not None:
            self.host.handle(event, record.now)
        step.rounds = [self._with_traffic(record, step) for record in step.rounds]
        if step.rounds and not self.finished:  # a round closed, the next one just opened
            step.snapshot = encode_snapshot(
                DriverState(
                    machine=self.machine.snapshot(),
                    timers=[(t, at) for t, (at, _) in sorted(self.host.timers.items(), key=_due)],
                    cursor=self.cursor,
                )
            )
        forget: int | None = None  # retention: see the module doc
        if self.finished:
            forget = _ALL_ROUNDS
        elif step.rounds:
            forget = max(r.round for r in step.rounds)
        self.store.commit_step(
            record,
            outgoing=step.outgoing,
            rounds=step.rounds,
            artefacts=[(data, WEIGHTS_MEDIA_TYPE) for data in step.artefacts.values()]
            + [(data, "application/json") for data in step.documents.values()]
            + [(data, GROUP_SUMS_MEDIA_TYPE) for data in step.group_sums.values()],
            job_update=step.job_update,
            snapshot=step.snapshot,
            forget_mail_before=forget,
        )
        self.seq += 1
        if step.outgoing and self.on_sent is not None:
            self.on_sent(sorted({str(row["recipient"]) for row in step.outgoing}))
        if self.audit is not None:  # after the commit: a record claims only what holds
            self._audit_step(self.audit, step, held)

    def _open_round(self) -> tuple[int, Any, Mapping[str, Any]] | None:
        """A secure machine's open round: its number, tree and commitments (live)."""
        machine = self.machine
        return machine.open_round() if isinstance(machine, SecureCoordinator) else None

    def _audit_step(
        self, audit: AuditLogs, step: _Step, held: tuple[int, Any, Mapping[str, Any]] | None
    ) -> None:
        for rec in step.rounds:
            committed = None
            if held is not None and held[0] == rec.round:
                committed = commitments_digest(held[2])
            audit.round_closed(self.job_id, rec, step.weights[rec.round], committed)
        if step.finished is not None:
            end = step.finished
            audit.finished(
                self.job_id,
                end.weights,
                tensors=self.tensors(),
                rounds=end.rounds,
                status="finished" if end.error is None else "failed",
                error=end.error,
            )
        else:
            self.audit_tree()

    def audit_tree(self) -> None:
        """The open round's tree, once (a secure job's; each round opened has one)."""
        opened = self._open_round()
        if self.audit is not None and opened is not None:
            round, tree, _ = opened
            self.audit.tree(self.job_id, round, tree.seed, tree.digest())

    # -- the host's ports: what a step causes is gathered for its commit -----------
    def send(self, sender: NodeId, effect: Send) -> None:
        step = self._current
        out = to_envelope(
            effect,
            sender=sender,
            job_id=self.job_id,
            keys=self.keys,
            directory=self.directory,
            publish_weights=lambda w: self._publish(w, step),
        )
        step.outgoing.append(out.row())

    def rejected(self, actor: NodeId, effect: Rejected) -> None:  # noqa: ARG002
        self._note(f"refused {effect.sender}: {effect.reason}")

    def round_closed(self, actor: NodeId, effect: RoundClosed) -> None:  # noqa: ARG002
        step = self._current
        sha = self._publish(effect.weights, step)
        sums = None
        if effect.group_sums:  # the AI provider's valuation reads them (jobs.groupsums)
            data, sums = group_sums_artefact(
                effect.round, effect.group_sums, min_group=self._group_floor()
            )
            step.group_sums[sums] = data
        step.rounds.append(replace(_round_record(effect, sha), group_sums=sums))
        step.weights[effect.round] = effect.weights
        step.job_update = {"current_round": effect.round + 1}
        log.info(
            "%s round %d closed: %d of %d",
            self.job_id,
            effect.round,
            effect.participants,
            effect.selected,
        )
        if effect.group_sums:
            n = len(effect.group_sums)
            log.info("%s round %d: %d group sums kept", self.job_id, effect.round, n)
        elif effect.groups_withheld is not None:
            self._note(f"round {effect.round}: {effect.groups_withheld}")

    def _group_floor(self) -> int:
        """The fewest members a disclosed group holds (the job's floor, at least 2)."""
        secure = self._kwargs.get("secure")
        return 2 if secure is None else max(secure.disclosure, 2)

    def statistics_closed(self, actor: NodeId, effect: StatisticsClosed) -> None:  # noqa: ARG002
        """Keep the statistics rounds' totals so far as an artefact of the job: its participants
        and its AI provider fit the job's preprocessing from them (``Preprocessor.refitted``)."""
        step = self._current
        previous = self.store.get_job(self.job_id).statistics if effect.round > 0 else None
        data = append_total(
            None if previous is None else self.store.get_artefact(previous),
            effect.total,
            len(effect.included),
        )
        sha = hashlib.sha256(data).hexdigest()
        step.documents[sha] = data
        update = {"statistics": sha, "current_round": effect.round + 1}
        step.job_update = {**(step.job_update or {}), **update}
        log.info("%s statistics round closed: %d nodes", self.job_id, len(effect.included))

    def job_finished(self, actor: NodeId, effect: JobFinished) -> None:  # noqa: ARG002
        step = self._current
        sha = self._publish(effect.weights, step)
        step.job_update = {
            **(step.job_update or {}),  # keep the last round's current_round
            "state": "finished" if effect.error is None else "failed",
            "final_weights": sha,
            "finished_at": self.clock(),
        }
        step.finished = effect
        if effect.error is not None:
            step.job_update["error"] = effect.error
            self._note(effect.error)
        if effect.stopped is not None:  # a normal end, before the job's rounds
            self._note(effect.stopped)
            log.info("%s ended after %d rounds: %s", self.job_id, effect.rounds, effect.stopped)
        self.finished = True

    def _with_traffic(self, record: RoundRecord, step: _Step) -> RoundRecord:
        """Add the round's bytes_up / bytes_down / bytes_aggregation to its record.

        Counted from the round's envelopes in the mailbox (everything, node to
        node included, travels through it) plus this step's own outgoing ones,
        so envelopes of the round that arrive after it closed are not counted.
        """
        counts = dict(self.store.round_traffic(self.job_id, record.round))
        for row in step.outgoing:
            if row["round"] == record.round:
                kind = int(row["kind"])
                n, total = counts.get(kind, (0, 0))
                counts[kind] = (n + 1, total + len(row["data"]))
        # The round's input weights are a vector of the same length as the
        # closed round's, so their artefact has the same size as the one just
        # published for this record.
        assert record.weights is not None
        weights_bytes = len(step.artefacts[record.weights])
        up, down, aggregation = _traffic(counts, weights_bytes)
        return replace(record, bytes_up=up, bytes_down=down, bytes_aggregation=aggregation)

    def _publish(self, weights: Vector, step: _Step) -> str:
        data, sha = weights_artefact(weights)
        step.artefacts[sha] = data
        return sha

    def _note(self, line: str) -> None:
        log.warning("%s: %s", self.job_id, line)
        self.refusals = [*self.refusals[-99:], line]

    def relay_problem(self, sender: str, recipient: str, kind: Kind) -> str | None:
        """Why the open round's tree has no role that sends this envelope (None: relay it).

        No lock: the machine publishes each round's roles as one immutable object,
        so a post never waits for the driver's step in progress.
        """
        machine = self.machine
        if not isinstance(machine, SecureCoordinator):
            return None
        return machine.relay_problem(NodeId(sender), NodeId(recipient), kind)

    def open_tree(self) -> Tree | None:
        """The open round's tree of a secure job (None: plaintext, or no round open); read
        without a lock, as ``relay_problem`` reads it."""
        machine = self.machine
        if not isinstance(machine, SecureCoordinator):
            return None
        roles = machine.relay_roles
        return None if roles is None else roles.tree

    # -- the thread ----------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def run_in_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"job-{self.job_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        away: float | None = None  # since when the database has been unavailable
        pause = _RETRY_FIRST
        while not self._stop.is_set() and not self.finished:
            try:
                self.poll()
            except Unavailable as exc:  # a database restart: wait it out, quietly
                if away is None:
                    away = time.monotonic()
                    log.warning("%s: database unavailable, retrying: %s", self.job_id, exc)
                self._stop.wait(pause)
                pause = min(2 * pause, _RETRY_MAX)
                continue
            except Exception:  # keep serving; the log says why, the step did not commit
                log.exception("%s: step failed", self.job_id)
                self._stop.wait(1.0)
            else:
                if away is not None:
                    log.warning(
                        "%s: database back after %.1f s; resumed at event %d",
                        self.job_id, time.monotonic() - away, self.seq,
                    )  # fmt: skip
                    away, pause = None, _RETRY_FIRST
            wait = min(self.next_timer() - self.clock(), 1.0)
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()


def verdicts_event(payload: Mapping[str, Any]) -> ContributorsRated:
    """A logged verdict (``JobDriver.rate``) as the machine's event."""
    excluded, weights = payload.get("excluded") or {}, payload.get("weights") or {}
    return ContributorsRated(
        excluded={NodeId(n): str(why) for n, why in excluded.items()},
        weights={NodeId(n): float(f) for n, f in weights.items()},
    )


def _due(item: tuple[Timer, tuple[float, int]]) -> tuple[float, int]:
    return item[1]


_UP_KINDS = {int(Kind.SHARE), int(Kind.UPDATE), int(Kind.DECLINE)}


def _traffic(counts: Mapping[int, tuple[int, int]], weights_bytes: int) -> tuple[int, int, int]:
    """A round's bytes up, down and among aggregators, from ``{kind: (n, bytes)}``.

    Counted as the simulator counts them:

    ``bytes_up``: contributors' uploads (sealed shares, updates, declines).
    ``bytes_down``: the train requests, plus the model itself: it is not in the
    request but an artefact each selected node fetches once (GET
    /v1/artefacts/{sha}), so ``weights_bytes`` is counted once per request.
    ``bytes_aggregation``: every other envelope (roles, partial sums, reports,
    commitments, evidence, audits) among aggregators and the coordinator.
    """
    train_n, train_bytes = counts.get(int(Kind.TRAIN), (0, 0))
    up = sum(total for kind, (_, total) in counts.items() if kind in _UP_KINDS)
    other = sum(
        total
        for kind, (_, total) in counts.items()
        if kind not in _UP_KINDS and kind != int(Kind.TRAIN)
    )
    return up, train_bytes + train_n * weights_bytes, other


def _round_record(closed: RoundClosed, weights: str) -> RoundRecord:
    return RoundRecord(
        round=closed.round,
        selected=closed.selected,
        participants=closed.participants,
        included=closed.included,
        **quality_fields(closed.quality),
        num_samples=closed.num_samples,
        train_loss=closed.mean_loss,
        skipped=closed.skipped,
        skip_reason=closed.skip_reason,
        **tree_fields(closed.tree),
        blamed=closed.blamed,
        excluded=tuple(f"{node} ({why})" for node, why in closed.excluded),
        declined=tuple(f"{node} ({why})" for node, why in closed.declined),
        capped=closed.capped,
        aggregators_failed=len(closed.silent_aggregators),
        closed_at=closed.closed_at,
        weights=weights,
        epsilon=math.nan if closed.epsilon is None else closed.epsilon,
    )
