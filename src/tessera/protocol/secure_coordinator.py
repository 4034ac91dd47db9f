"""The coordinator's machine for secure rounds up an execution tree.

Theory of operation, per round (DESIGN.md steps 3 to 7):

1. Select the cohort (seeded), derive the execution tree from the public
   seed, choose the ring so that the sum of every contributor's bounded
   terms can never wrap, and tell each contributor where its k shares go and
   each aggregator which (group, position) roles it serves.
2. Contributors check their assignment against the tree they derive
   themselves, train, then seal one share for each of their group's k
   aggregators. The coordinator never sees a share: it only relays.
3. Each aggregator reports which inputs it holds (when all arrived, or at
   its level's report time). When a group's k reports are in, or at the
   level's commit deadline, the coordinator commits the *intersection*: the
   inputs every position holds. Too few (leaf: below ``min_group``), or a
   position that never reported, drops the group from the round (its
   parents stop waiting for it), never the job.
4. Positions sum exactly the committed set and pass sums to the same
   position of the parent group; the root group's k sums come back sealed
   to the coordinator (for the AI provider), whose sum is the total: only
   there do the masks cancel. Decoded, the total is
   ``[sum w*delta, sum w*loss/loss_cap, losses capped, sum w]``, so the
   weighted mean follows, and how many losses the cap hid.
5. A position still silent at its level's first commit deadline is handed to
   the group's backup (the tree lists them): its inputs are sent again and
   its parent told; at the final deadline the group commits or leaves.
6. Audits (``protocol.audit``), optimistic: each sum is checked by the
   position above it while the sums move on; every upper seat says when its
   checks are done (``Kind.AUDITED``). The root's sums are checked here, k-1
   of k positions chosen after they arrive. The round is applied only once
   every check is done; a failed one (an accusation, a root sum that its
   evidence does not justify) ends the round at once with nothing applied,
   names the tamperer in ``RoundClosed.blamed`` and excludes it from the job,
   and the next round re-runs from the same weights without it.
7. A job with ``group_sums``: each leaf seat sends its sum here too, and at
   the close each included leaf group's sum is decoded if the total vouches
   for it (``protocol.groups``, ``RoundClosed.group_sums``).

Deadlines drive every phase (``now`` comes with each event); the machine
does no I/O and keeps no clock.

Snapshots follow ``protocol.coordinator``'s contract, and hold nothing
more: everything a freshly opened round holds (tree, ring, seats, spares,
deadlines, the replay guard's floor) is derived from the seed, the round,
the withdrawn nodes and the ``now`` it opened at, so ``restore`` re-derives
it by opening that round again. Keys, directory and organisations are
construction arguments, passed again to ``restore``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from tessera.crypto.fixedpoint import Ring, choose_ring, decode, quantized_ring
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import combine
from tessera.errors import ConfigError, InvalidEnvelope, LocalProtocolError, RemoteProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.accusation import Case, Finding, Judgement, decode_proof, judge
from tessera.protocol.audit import open_evidence, verify_evidence
from tessera.protocol.bounds import bound_problem
from tessera.protocol.codec import (
    Commit,
    PartialPayload,
    Reassign,
    Report,
    decode_accusation,
    decode_labelled,
    decode_named,
    decode_partial,
    decode_report,
    decode_shared,
    encode_commit,
    encode_labelled,
    encode_reassign,
)
from tessera.protocol.coordinator import Coordinator, CoordinatorSnapshot, round_cohort
from tessera.protocol.effects import (
    CancelTimer,
    Effect,
    JobFinished,
    Rejected,
    Send,
    StartTimer,
    StatisticsClosed,
)
from tessera.protocol.events import (
    ContributorsRated,
    Event,
    JobStarted,
    MessageReceived,
    ParticipantWithdrawn,
    TimerFired,
)
from tessera.protocol.groups import Disclosure, GroupParts, disclose, robust_update
from tessera.protocol.kinds import SEALED, Kind
from tessera.protocol.limits import MAX_ENVELOPE_BYTES, TAIL
from tessera.protocol.messages import (
    AggregateRequest,
    Sealed,
    SecureAssignment,
    TrainingDeclined,
)
from tessera.protocol.noise import Budget, PrivacyParams
from tessera.protocol.params import RoundParams, StatisticsRound
from tessera.protocol.quality import RoundQuality
from tessera.protocol.relay import RelayRoles
from tessera.protocol.states import (
    SECURE_ROUND_TRANSITIONS,
    CoordinatorInput,
    CoordinatorState,
    PhaseInput,
    RoundPhase,
)
from tessera.protocol.strategies import Strategy
from tessera.protocol.timers import AuditDue, CommitDue, RoundDeadline, TrainingDue
from tessera.protocol.topology import Group, Tree, TreeParams, derive_tree
from tessera.protocol.wire import Wire
from tessera.weights import Vector


@dataclass(frozen=True, kw_only=True, slots=True)
class SecureParams:
    """Secure-aggregation settings of a job."""

    tree: TreeParams
    clip: float  # the L2 bound on each update: also a bound on every coordinate
    max_weight: float  # samples at which a contributor's weight saturates at 1
    loss_cap: float = 20.0
    phase_timeout: float = 30.0
    min_frac_bits: int = 16
    # Bits per contributor word of a training round's update (``[secure] precision``):
    # coarser stochastic rounding, in the narrowest ring that cannot overflow
    # (``fixedpoint.quantized_ring``: 16 bits for 8-bit words and up to 256 contributors).
    # None: ``min_frac_bits`` in a 32- or 64-bit ring.
    precision: int | None = None
    audit: bool = True  # every partial sum checked by the level above (costs about 2x)
    # Below 1, each auditor checks each child's sum with this probability, drawn only
    # once the sum has arrived (``Aggregator.draws_audit``): cheaper, and a tamperer is
    # still caught with this probability per sum it forges.
    audit_fraction: float = 1.0
    # The job's public beacon, mixed into every round's tree seed: fixed by the
    # participants' commit-reveal once the participants are frozen, so nobody could
    # predict (or grind) the trees when choosing who takes part. Empty in the simulator.
    beacon: bytes = b""
    # The first rounds total every node's statistics (``StatisticsRound``); training
    # starts after them.
    statistics: StatisticsRound | None = None
    # Distributed differential privacy: each contributor's noise and the budget.
    privacy: PrivacyParams | None = None
    # Each leaf group's sum is disclosed to the coordinator too (``protocol.groups``), for
    # group-level contribution indicators; ``group_floor``: the fewest contributors a
    # disclosed sum covers (None: ``tree.min_group``, never below 2).
    group_sums: bool = False
    group_floor: int | None = None
    # How the round's update is made of the disclosed group sums: "mean" (the total, as
    # without them), "median" or "trimmed_mean" of the groups' means, coordinate-wise
    # (``protocol.groups.robust_update``): a few hostile groups move it little.
    combine: str = "mean"
    trim: float = 0.1
    # Data-quality words each contributor shares after its update in a training round
    # (``protocol.quality``: 3 + the classes; 0: none). Only with group sums.
    quality: int = 0
    # FedNova (``RoundParams.fednova``): the public bound on a contributor's local steps,
    # the scale of the steps word each shares after its quality words; 0: no such word.
    max_steps: float = 0.0

    def __post_init__(self) -> None:
        for name in ("clip", "max_weight", "loss_cap", "phase_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"secure.{name}", "must be positive")
        if not 0 < self.audit_fraction <= 1:
            raise ConfigError("secure.audit_fraction", "must be in (0, 1]")
        if self.group_floor is not None and self.group_floor < 2:
            raise ConfigError("contributions.min_group", "must be at least 2 (one is an update)")
        if self.group_sums and self.privacy is not None:
            raise ConfigError(
                "contributions",
                "a group's sum carries only its members' share of the noise: not as private "
                "as the total; remove [contributions] or [privacy]",
            )
        if self.precision is not None and self.privacy is not None:
            # The noise lives in ring units at the job's fixed scale (protocol.noise).
            raise ConfigError(
                "secure.precision", "a private job's ring scale is its noise's; remove one"
            )
        if self.precision is not None and not 2 <= self.precision <= 32:
            raise ConfigError("secure.precision", "must be an int in [2, 32]")
        if self.combine not in ("mean", "median", "trimmed_mean"):
            raise ConfigError("contributions.combine", f"unknown combination {self.combine!r}")
        if self.combine != "mean" and not self.group_sums:
            raise ConfigError("contributions.combine", "a robust combination needs group sums")
        if self.quality and not self.group_sums:
            raise ConfigError("contributions", "quality statistics come with group sums")
        if not 0 <= self.trim < 0.5:
            raise ConfigError("contributions.trim", "must be in [0, 0.5)")
        self._check_fednova()
        if self.group_sums and self.tree.backups >= self.tree.k:
            # k backups could re-sum all k positions of a group over another set: the
            # difference of the two disclosed sums would be the members left out.
            raise ConfigError(
                "contributions", "needs secure.backups below secure.k (fewer backups than seats)"
            )

    def _check_fednova(self) -> None:
        if not (self.max_steps == 0 or 1 <= self.max_steps < float("inf")):
            raise ConfigError("strategy.normalize", "the bound on local steps must be >= 1")
        if self.max_steps and (self.group_sums or self.privacy is not None):
            raise ConfigError(
                "strategy.normalize",
                "FedNova's steps word is not yet carried by group sums or private rounds",
            )

    @property
    def disclosure(self) -> int:
        """The floor a leaf group's disclosed sum is held to; 0: nothing is disclosed."""
        if not self.group_sums:
            return 0
        return max(self.group_floor or self.tree.min_group, 2)

    @property
    def leaf_minimum(self) -> int:
        """The fewest contributors a training round's leaf group commits with."""
        return max(self.tree.min_group, self.disclosure)

    @property
    def term_bound(self) -> float:
        """Every coordinate a contributor encodes is at most this in size."""
        return max(self.clip, 1.0)  # the loss is sent as a fraction of loss_cap

    def training_ring(self, cohort: int) -> Ring:
        """The ring of a training round of ``cohort`` contributors (without privacy): the
        smallest that cannot overflow when every one of them is at ``term_bound``."""
        if self.precision is not None:
            return quantized_ring(bound=self.term_bound, terms=cohort, precision=self.precision)
        return choose_ring(bound=self.term_bound, terms=cohort, min_frac_bits=self.min_frac_bits)


# A round's total, its included contributors and its group sums.
_Bounded = tuple[npt.NDArray[np.float64], list[str], Disclosure]


@dataclass
class _RoundState:
    tree: Tree
    ring: Ring
    length: int
    train_until: float
    digest: str  # the tree's, computed once per round
    seats: dict[str, list[NodeId]]  # who serves each position now (replacements included)
    spares: dict[str, list[NodeId]]  # backups not yet used
    reports: dict[str, dict[int, Report]] = field(default_factory=dict)
    committed: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    root_parts: dict[int, PartialPayload] = field(default_factory=dict)
    blamed: dict[str, str] = field(default_factory=dict)  # aggregator -> why
    audits_due: set[int] = field(default_factory=set)  # root positions owing evidence
    verdicts_due: set[tuple[str, int]] = field(default_factory=set)  # seats still auditing
    caught: dict[NodeId, str] = field(default_factory=dict)  # tamperers: excluded from the job
    copies: dict[int, dict[str, bytes]] = field(default_factory=dict)  # root seats' input boxes
    group_parts: GroupParts = field(default_factory=GroupParts)  # leaf seats' disclosed sums
    phase: RoundPhase = RoundPhase.AGGREGATING
    # A buffered job's: each contributor's staleness, from its notice that its shares
    # are out (``Kind.SHARED``); only they are committed.
    staleness: dict[str, int] = field(default_factory=dict)
    reporting: bool = False  # the leaf seats were told to report now (``Kind.REPORT_NOW``)
    silent: set[NodeId] = field(default_factory=set)  # seat holders found silent at a deadline


class SecureCoordinator(Coordinator):
    def __init__(
        self,
        params: RoundParams,
        nodes: Sequence[NodeId],
        initial_weights: Vector,
        strategy: Strategy,
        *,
        secure: SecureParams,
        keys: NodeKeys,
        directory: Mapping[NodeId, PublicKeys],
        organisations: Mapping[NodeId, str | None] | None = None,
    ) -> None:
        super().__init__(params, nodes, initial_weights, strategy)
        if params.reweight_availability and secure.privacy is not None:
            raise ConfigError(
                "federation.availability", "a private job weighs every contributor alike"
            )
        if params.fednova != bool(secure.max_steps):
            raise ConfigError("strategy.normalize", "FedNova needs secure.max_steps, and only it")
        self.secure = secure
        self.keys = keys
        self.directory = directory
        self.organisations = dict(organisations or dict.fromkeys(self.nodes))
        self.wire = Wire(COORDINATOR, params.job_id, keys, directory)
        self._rs: _RoundState | None = None
        self.budget = Budget(secure.privacy) if secure.privacy is not None else None
        self._stopping: str | None = None  # a private round the budget did not allow
        self.relay_roles: RelayRoles | None = None  # the open round's, for the relay
        self.ring_of_statistics: Ring | None = None  # the statistics round's, once opened

    def open_round(self) -> tuple[int, Tree, Mapping[str, tuple[str, ...] | None]] | None:
        """The open round's number, tree and commitments so far, for the coordinator's
        audit log; the commitments are the round's own mapping, which grows until the
        round closes. None before the first round."""
        rs = self._rs
        return None if rs is None else (self.round, rs.tree, rs.committed)

    # -- events -------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, JobStarted | ParticipantWithdrawn | ContributorsRated):
            return super().handle(event, now)
        if isinstance(event, TimerFired):
            self._transition(CoordinatorInput.DEADLINE)
            timer = event.timer
            if not isinstance(timer, RoundDeadline | AuditDue | CommitDue | TrainingDue):
                raise self._failed(f"secure rounds set no {type(timer).__name__} timers")
            if self.state is not CoordinatorState.COLLECTING or self._rs is None:
                return []
            if timer.round != self.round or self._rs.phase is RoundPhase.CLOSED:
                return []  # a timer of a closed round
            if isinstance(timer, RoundDeadline):
                return self._close_secure(now, PhaseInput.DEADLINE)
            if isinstance(timer, AuditDue):
                return self._audits_late(self._rs, now)
            if isinstance(timer, TrainingDue):
                return self._report_now(self._rs)
            return self._commit_level(timer.level, now, final=timer.final)
        if isinstance(event, MessageReceived):
            self._transition(CoordinatorInput.MESSAGE)
            return self._on_secure_message(event, now)
        raise self._failed(f"cannot handle {type(event).__name__}")

    def _on_secure_message(self, event: MessageReceived, now: float) -> list[Effect]:
        msg = event.message
        if isinstance(msg, TrainingDeclined):
            return self._on_decline(event.sender, msg)
        if not isinstance(msg, Sealed):
            return [Rejected(sender=event.sender, reason="secure rounds take sealed envelopes")]
        if self.state is not CoordinatorState.COLLECTING or self._rs is None:
            return [Rejected(sender=event.sender, reason="no round is open")]
        try:
            return self._on_sealed(msg.data, now)
        except (InvalidEnvelope, RemoteProtocolError) as exc:
            return [Rejected(sender=event.sender, reason=str(exc))]

    def _on_decline(self, sender: NodeId, msg: TrainingDeclined) -> list[Effect]:
        """A selected contributor that cannot take part says why: kept for the round's
        record only. Its aggregators are not told, so the round still waits for its
        shares until their deadline, as for any contributor gone silent."""
        if (
            self.state is not CoordinatorState.COLLECTING
            or msg.job_id != self.params.job_id
            or msg.round != self.round
            or sender not in self._selected
        ):
            return [Rejected(sender=sender, reason=f"no decline of round {msg.round} is taken")]
        self._declined[sender] = msg.reason
        return []

    def _rate(self, event: ContributorsRated) -> list[Effect]:
        if self.budget is not None and event.weights:
            # Its total weight is the count of the included (see ``_close_secure``).
            raise self._failed("a private job weighs every contributor alike")
        return super()._rate(event)

    def relay_problem(self, sender: NodeId, recipient: NodeId, kind: Kind) -> str | None:
        """Why the open round's tree expects no such envelope (``RelayRoles.problem``)."""
        roles = self.relay_roles  # one read: the relay's threads never take a lock for it
        return "no round is open" if roles is None else roles.problem(sender, recipient, kind)

    def _round_progressed(self) -> bool:
        rs = self._rs
        return rs is None or bool(
            rs.reports or rs.committed or rs.root_parts or rs.blamed or rs.staleness
        )

    # -- opening a round --------------------------------------------------------
    @property
    def counting(self) -> bool:
        """Whether the open round is a statistics round."""
        return self.round < self.first_training_round

    @property
    def first_training_round(self) -> int:
        return 0 if self.secure.statistics is None else self.secure.statistics.rounds

    @property
    def private_statistics(self) -> bool:
        """Whether the statistics rounds carry noise (``protocol.noise.private_statistics``)."""
        p = self.secure.privacy
        return p is not None and p.statistics_clip is not None

    # -- the privacy budget ------------------------------------------------------
    def snapshot(self) -> CoordinatorSnapshot:
        spent = () if self.budget is None else tuple(self.budget.spent)
        return replace(super().snapshot(), spent=spent)

    @classmethod
    def restore(cls, snapshot: CoordinatorSnapshot, /, *args: Any, **kwargs: Any) -> Self:
        machine = super().restore(snapshot, *args, **kwargs)
        if machine.budget is not None:
            machine.budget = Budget(machine.budget.privacy, list(snapshot.spent))
        elif snapshot.spent:
            raise LocalProtocolError("a snapshot with a privacy ledger, of a job without one")
        return machine

    def _stop_reason(self) -> str | None:
        if self.budget is None:
            return None
        return self._stopping or self.budget.exhausted()

    def _open_round(self, round: int, now: float) -> list[Effect]:
        self.round = round
        self._opened_at, self._absent_at_open = now, self._absent()
        self._ratings_at_open = dict(self.ratings)
        self._factors = self._weight_factors()
        stats = self.secure.statistics if round < self.first_training_round else None
        cohort = round_cohort(self.params, self.nodes, round, statistics=self.first_training_round)
        self._selected = frozenset(cohort)
        self._declined = {}
        tree = derive_tree(
            job_id=self.params.job_id,
            round=round,
            nodes=self.organisations,
            contributors=cohort,
            params=self.secure.tree,
            beacon=self.secure.beacon,
        )
        if self.secure.privacy is not None and (stats is None or self.private_statistics):
            # Room for the noise too; a private statistics round is encoded as an update.
            ring = self.secure.privacy.ring(bound=self.secure.term_bound, cohort=len(cohort))
            if stats is not None:
                self.ring_of_statistics = ring
        elif stats is None:
            ring = self.secure.training_ring(len(cohort))
        else:  # counts need no fractional bits; sums take what is left
            ring = choose_ring(bound=stats.bound, terms=len(cohort), min_frac_bits=0)
            self.ring_of_statistics = ring
        train_until = now + self.params.round_timeout
        rs = _RoundState(
            tree=tree,
            ring=ring,
            length=(
                self.weights.shape[0] + self.secure.quality + self.params.fednova
                if stats is None
                else stats.lengths[round]
            )
            + TAIL,
            train_until=train_until,
            digest=tree.digest(),
            seats={g.id: list(g.aggregators) for g in tree.groups},
            spares={g.id: list(g.backups) for g in tree.groups},
        )
        self._rs = rs
        self.relay_roles = RelayRoles(tree, group_sums=self.secure.group_sums and stats is None)
        self.wire.replay.forget_before(round)
        self._seat_backups_for_withdrawn(rs)
        weights = self.weights if stats is None else _NO_WEIGHTS
        weights.flags.writeable = False
        phase = self.secure.phase_timeout
        config = self.strategy.configure(round)
        effects: list[Effect] = []
        for group in tree.groups:
            report_at = train_until + (3 * group.level + 1) * phase
            for position in range(len(group.aggregators)):
                effects.append(self._aggregate_request(rs, group, position, report_at))
            if group.level == 0:
                effects.extend(
                    self._train_requests(
                        group=group,
                        weights=weights,
                        deadline=train_until,
                        config=config,
                        rs=rs,
                    )
                )
        # Per level: a commit deadline (replace silent positions), then a final one.
        for level in range(tree.depth + 1):
            first = train_until + (3 * level + 2) * phase
            effects.append(StartTimer(timer=CommitDue(round=round, level=level), at=first))
            final = CommitDue(round=round, level=level, final=True)
            effects.append(StartTimer(timer=final, at=first + phase))
        close_at = train_until + (3 * tree.depth + 4) * phase
        effects.append(StartTimer(timer=RoundDeadline(round=round), at=close_at))
        report_after = self.params.report_after
        if report_after is not None and now + report_after < train_until:
            # A deadline round: no straggler is waited for past its deadline.
            effects.append(StartTimer(timer=TrainingDue(round=round), at=now + report_after))
        return effects

    def _seat_backups_for_withdrawn(self, rs: _RoundState) -> None:
        """A withdrawn node serves no seat from the round after its revocation: each of
        its seats goes to the group's next backup before any request is sent, so no
        round waits for it (without a backup left, the seat stays, and is replaced
        like any silent one if it does not serve)."""
        for group in rs.tree.groups:
            seats, spares = rs.seats[group.id], rs.spares[group.id]
            spares[:] = [s for s in spares if s not in self._absent_at_open]
            for position, holder in enumerate(seats):
                if holder in self._absent_at_open and spares:
                    seats[position] = spares.pop(0)

    def _aggregate_request(
        self, rs: _RoundState, group: Group, position: int, report_at: float
    ) -> Send:
        tree = rs.tree
        inputs: tuple[str, ...]
        absent: tuple[str, ...] = ()
        if group.level == 0:
            inputs = senders = tuple(group.members)
            absent = tuple(m for m in group.members if m in self._absent_at_open)
        else:
            inputs = tuple(group.children)
            senders = tuple(rs.seats[c][position] for c in group.children)
        parent = rs.seats[group.parent][position] if group.parent is not None else COORDINATOR
        node = rs.seats[group.id][position]
        every = self.secure.audit_fraction >= 1  # else sums wait to be drawn for an audit
        audit = (
            {c: self._inputs_of(rs, tree.group(c), position) for c in group.children}
            if self.secure.audit
            else {}
        )
        request = AggregateRequest(
            job_id=self.params.job_id,
            round=self.round,
            group=group.id,
            position=position,
            inputs=inputs,
            senders=senders,
            leaf=group.level == 0,
            parent=parent,
            parent_group=group.parent or "",
            report_at=report_at,
            ring_bits=rs.ring.bits,
            frac_bits=rs.ring.frac_bits,
            ring_terms=rs.ring.terms,
            length=rs.length,
            tree_digest=rs.digest,
            audit=audit,
            audit_fraction=self.secure.audit_fraction,
            send_evidence=self.secure.audit and group.parent is not None and every,
            evidence_on_request=self.secure.audit and (group.parent is None or not every),
            absent=absent,
            group_sums=self.secure.disclosure if group.level == 0 and not self.counting else 0,
        )
        return Send(recipient=node, message=request)

    @staticmethod
    def _inputs_of(rs: _RoundState, group: Group, position: int) -> tuple[bool, dict[str, NodeId]]:
        """What ``group``'s aggregator at ``position`` sums: (leaf?, input id -> sender)."""
        if group.level == 0:
            return True, {m: m for m in group.members}
        return False, {c: rs.seats[c][position] for c in group.children}

    def _train_requests(
        self,
        *,
        group: Group,
        weights: Vector,
        deadline: float,
        config: Mapping[str, float],
        rs: _RoundState,
    ) -> list[Effect]:
        k = len(group.aggregators)
        return [
            self._train_request(
                member,
                weights,
                deadline,
                config,
                secure=SecureAssignment(
                    group=group.id,
                    clip=self.secure.clip,
                    aggregators=tuple(rs.seats[group.id]),  # a backup where one withdrew
                    backups=tuple(group.backups),
                    full_position=i % k,  # the full-size share rotates
                    ring_bits=rs.ring.bits,
                    frac_bits=rs.ring.frac_bits,
                    ring_terms=rs.ring.terms,
                    max_weight=self.secure.max_weight,
                    loss_cap=self.secure.loss_cap,
                    tree_digest=rs.digest,
                    weight=1.0 if self.counting else self._factors.get(member, 1.0),
                    quality=0 if self.counting else self.secure.quality,
                    steps=0.0 if self.counting else self.secure.max_steps,
                ),
                statistics=self.counting,
            )
            for i, member in enumerate(group.members)
            if member not in self._absent_at_open  # absent: its aggregators do not wait
        ]

    # -- reports and commitments ---------------------------------------------
    def _on_sealed(self, data: bytes, now: float) -> list[Effect]:
        assert self._rs is not None
        rs = self._rs
        env = self.wire.open(data, round=self.round, max_bytes=MAX_ENVELOPE_BYTES)
        handlers: dict[int, Callable[[_RoundState, NodeId, bytes, float], list[Effect]]] = {
            Kind.REPORT: self._on_report,
            Kind.PARTIAL: self._on_root_sum,
            Kind.ACCUSE: self._on_accusation,
            Kind.EVIDENCE: self._on_evidence,
            Kind.GROUP_SUM: self._on_group_sum,
            Kind.AUDITED: self._on_audited,
            Kind.INPUT_COPY: self._on_input_copy,
            Kind.SHARED: self._on_shared,
        }
        if env.kind in SEALED and not env.sealed:
            raise RemoteProtocolError("sums and evidence must be sealed")
        handler = handlers.get(env.kind)
        if handler is None:
            raise RemoteProtocolError(f"the coordinator takes no envelope of kind {env.kind}")
        return handler(rs, NodeId(env.sender), env.payload, now)

    def _on_report(
        self, rs: _RoundState, sender: NodeId, payload: bytes, now: float
    ) -> list[Effect]:
        report = decode_report(payload)
        group = self._group_served_by(rs, report.group, report.position, sender)
        if report.group in rs.committed:
            raise RemoteProtocolError(f"{report.group} is already committed")
        unknown = set(report.received) - set(group.members if group.level == 0 else group.children)
        if unknown:
            raise RemoteProtocolError(f"report names inputs outside {group.id}")
        if report.position in rs.reports.get(report.group, {}):
            raise RemoteProtocolError(f"{report.group} position {report.position} already reported")
        rs.reports.setdefault(group.id, {})[report.position] = report
        if len(rs.reports[group.id]) == len(group.aggregators):
            return self._commit(group, now)
        return []

    def _on_shared(
        self,
        rs: _RoundState,
        sender: NodeId,
        payload: bytes,
        now: float,  # noqa: ARG002 - one signature for every handler
    ) -> list[Effect]:
        """A buffered job's contributor sealed its shares: count it (and its staleness);
        at the job's buffer, the training phase closes (``_report_now``)."""
        tau = decode_shared(payload)
        buffer = self.params.buffer
        if buffer is None or self.counting:
            raise RemoteProtocolError("this round is not buffered")
        if sender not in self._selected or sender in self._absent_at_open:
            raise RemoteProtocolError(f"{sender} was not asked to train this round")
        if sender in rs.staleness:
            raise RemoteProtocolError(f"{sender} already said its shares are out")
        if not 0 <= tau <= min(self.params.max_staleness, self.round):
            raise RemoteProtocolError(f"an update {tau} rounds stale is not taken")
        rs.staleness[sender] = tau
        if len(rs.staleness) >= buffer:
            return self._report_now(rs)
        return []

    def _report_now(self, rs: _RoundState) -> list[Effect]:
        """Close the training phase: every leaf seat reports the inputs it holds at once,
        as at its report time; the rest of the round is unchanged."""
        if rs.reporting:
            return []
        rs.reporting = True
        return [
            self._signed(rs.seats[group.id][j], Kind.REPORT_NOW, encode_labelled(group.id, j, b""))
            for group in rs.tree.groups
            if group.level == 0
            for j in range(len(group.aggregators))
        ]

    def _on_root_sum(
        self, rs: _RoundState, sender: NodeId, payload: bytes, now: float
    ) -> list[Effect]:
        part = decode_partial(payload)
        root = rs.tree.root
        if part.group != root.id:
            raise RemoteProtocolError("only the root group's sums come to the coordinator")
        self._group_served_by(rs, part.group, part.position, sender)
        if part.position in rs.root_parts:
            raise RemoteProtocolError("this position's root sum already arrived")
        if part.words.shape[0] != rs.length or part.words.dtype != rs.ring.dtype:
            raise RemoteProtocolError("root sum does not match the round's ring or model")
        rs.root_parts[part.position] = part
        if len(rs.root_parts) == len(root.aggregators):
            if not self.secure.audit:
                return self._close_secure(now, PhaseInput.ROOT_SUMMED)
            return self._audit_root(rs, now)
        return []

    def _on_group_sum(
        self,
        rs: _RoundState,
        sender: NodeId,
        payload: bytes,
        now: float,  # noqa: ARG002 - one signature for every handler
    ) -> list[Effect]:
        part = decode_partial(payload)
        group = self._group_served_by(rs, part.group, part.position, sender)
        if not self.secure.group_sums or self.counting:
            raise RemoteProtocolError("this round discloses no group sums")
        committed = rs.committed.get(group.id)
        floor = self.secure.disclosure
        rs.group_parts.take(group, committed, part, ring=rs.ring, length=rs.length, floor=floor)
        return []

    def _on_accusation(
        self, rs: _RoundState, sender: NodeId, payload: bytes, now: float
    ) -> list[Effect]:
        accusation, proof = decode_accusation(payload)
        accused = NodeId(accusation.accused)
        group = self._group_served_by(rs, accusation.group, accusation.position, accused)
        if group.parent is None or rs.seats[group.parent][accusation.position] != sender:
            raise RemoteProtocolError(f"{sender} does not audit {accusation.group}")
        judgement = self._judge(
            rs,
            group=group,
            position=accusation.position,
            accused=accused,
            accuser=sender,
            proof=proof,
        )
        where = f"{accusation.group}: "
        if judgement.finding is Finding.UPHELD:
            why = f"{where}{judgement.reason} (audited by {sender})"
            rs.blamed[accused] = rs.caught[accused] = why
        elif judgement.finding is Finding.FALSE:
            why = f"{where}accused {accused} falsely: {judgement.reason}"
            rs.blamed[sender] = rs.caught[sender] = why
        else:  # either may have withheld a key or a copy: neither is excluded
            rs.blamed[accused] = f"{where}disputed with its auditor {sender}: {judgement.reason}"
            rs.blamed[sender] = f"{where}disputed with {accused}: {judgement.reason}"
        # Its sum went up already (audits are optimistic): the round cannot be applied.
        return self._close_secure(now, PhaseInput.TAMPERING)

    def _judge(
        self,
        rs: _RoundState,
        *,
        group: Group,
        position: int,
        accused: NodeId,
        accuser: NodeId,
        proof: bytes,
    ) -> Judgement:
        """Redo the accuser's audit from the accused's own signed messages."""
        try:
            evidence = decode_proof(proof)
        except RemoteProtocolError as exc:
            return Judgement(Finding.FALSE, str(exc))
        leaf, expected = self._inputs_of(rs, group, position)
        case = Case(accused, accuser, group.id, position, expected, leaf, rs.ring, rs.length)
        return judge(
            evidence, case, directory=self.directory, job_id=self.params.job_id, round=self.round
        )

    def _on_input_copy(
        self,
        rs: _RoundState,
        sender: NodeId,
        payload: bytes,
        now: float,  # noqa: ARG002 - one signature for every handler
    ) -> list[Effect]:
        """A root seat's input box, kept in case its position is audited: ciphertext
        under keys only the seat holds, so holding every position's boxes reveals nothing."""
        group_id, position, body = decode_labelled(payload)
        root = rs.tree.root
        if group_id != root.id or not self.secure.audit:
            raise RemoteProtocolError("only the root's seats forward their inputs here")
        self._group_served_by(rs, group_id, position, sender)
        input_id, start = decode_named(body)
        if input_id not in (root.members if root.level == 0 else root.children):
            raise RemoteProtocolError(f"{input_id} is not an input of {root.id}")
        held = rs.copies.setdefault(position, {})
        if input_id in held:
            raise RemoteProtocolError(f"{input_id}'s box was forwarded already")
        held[input_id] = body[start:]
        return []

    def _on_audited(
        self, rs: _RoundState, sender: NodeId, payload: bytes, now: float
    ) -> list[Effect]:
        group_id, position, _ = decode_labelled(payload)
        self._group_served_by(rs, group_id, position, sender)
        if (group_id, position) not in rs.verdicts_due:
            raise RemoteProtocolError(f"{group_id} position {position} owes no audit notice")
        rs.verdicts_due.discard((group_id, position))
        return self._close_if_audited(rs, now)

    def _audits_late(self, rs: _RoundState, now: float) -> list[Effect]:
        """Audits past their time: the round cannot be vouched for, and is not applied."""
        for j in sorted(rs.audits_due):
            rs.blamed[rs.seats[rs.tree.root.id][j]] = "did not justify its root sum"
        for group_id, j in sorted(rs.verdicts_due):
            rs.blamed[rs.seats[group_id][j]] = f"{group_id}: did not finish its audits"
        return self._close_secure(now, PhaseInput.AUDIT_TIMEOUT)

    def _close_if_audited(self, rs: _RoundState, now: float) -> list[Effect]:
        """Close once the root's sums are in and every check, here and below, is done."""
        if rs.phase is RoundPhase.AUDITING and not rs.audits_due and not rs.verdicts_due:
            return self._close_secure(now, PhaseInput.EVIDENCE_DONE)
        return []

    def _on_evidence(
        self, rs: _RoundState, sender: NodeId, payload: bytes, now: float
    ) -> list[Effect]:
        group_id, position, body = decode_labelled(payload)
        root = rs.tree.root
        if group_id != root.id or position not in rs.audits_due:
            raise RemoteProtocolError(f"no evidence is due for {group_id} position {position}")
        self._group_served_by(rs, group_id, position, sender)
        rs.audits_due.discard(position)
        is_leaf, inputs = self._inputs_of(rs, root, position)
        try:
            evidence = open_evidence(
                body,
                job_id=self.params.job_id,
                round=self.round,
                audited=sender,
                keys=self.keys,
                auditor=COORDINATOR,
                directory=self.directory,
                copies=rs.copies.get(position, {}),
            )
            verify_evidence(
                evidence,
                audited=sender,
                partial=rs.root_parts[position],
                expected=inputs,
                leaf=is_leaf,
                ring=rs.ring,
                length=rs.length,
                directory=self.directory,
                job_id=self.params.job_id,
                round=self.round,
            )
        except RemoteProtocolError as exc:
            rs.blamed[sender] = rs.caught[sender] = f"{root.id}: {exc}"
            return self._close_secure(now, PhaseInput.TAMPERING)
        return self._close_if_audited(rs, now)

    @staticmethod
    def _group_served_by(rs: _RoundState, group_id: str, position: int, sender: NodeId) -> Group:
        if not rs.tree.has_group(group_id):
            raise RemoteProtocolError(f"no group {group_id!r} this round")
        seats = rs.seats[group_id]
        if not 0 <= position < len(seats) or seats[position] != sender:
            raise RemoteProtocolError(f"{sender} does not serve {group_id} position {position}")
        return rs.tree.group(group_id)

    def _commit(self, group: Group, now: float) -> list[Effect]:
        assert self._rs is not None
        rs = self._rs
        reports = rs.reports.get(group.id, {})
        included: tuple[str, ...] | None = None
        if len(reports) == len(group.aggregators):
            sets = [set(r.received) for r in reports.values()]
            common = sorted(set.intersection(*sets))
            if group.level == 0 and self.params.buffer is not None and not self.counting:
                # Only updates whose staleness is known: their weights are s(tau) w.
                common = [m for m in common if m in rs.staleness]
            leaf = self.secure.tree.min_group if self.counting else self.secure.leaf_minimum
            minimum = leaf if group.level == 0 else 1
            if len(common) >= minimum:
                included = tuple(common)
        rs.committed[group.id] = included
        if included is not None and group.level > 0 and self.secure.audit:
            # Each seat audits its committed children, and says when it is done.
            rs.verdicts_due |= {(group.id, j) for j in range(len(group.aggregators))}
        payload = encode_commit(Commit(group.id, included))
        recipients = list(rs.seats[group.id])
        if included is None and group.parent is not None:
            recipients += rs.seats[group.parent]  # the parents stop waiting for it
        effects: list[Effect] = [
            self._signed(r, Kind.COMMIT, payload) for r in dict.fromkeys(recipients)
        ]
        if included is None and group.parent is None:
            effects.extend(self._close_secure(now, PhaseInput.ROOT_LEFT))
        return effects

    def _commit_level(self, level: int, now: float, *, final: bool) -> list[Effect]:
        """At a level's deadline: commit what is complete, replace silent positions once."""
        rs = self._rs
        assert rs is not None
        effects: list[Effect] = []
        for group in rs.tree.groups:
            if group.level != level or group.id in rs.committed:
                continue
            reports = rs.reports.get(group.id, {})
            silent = [j for j in range(len(group.aggregators)) if j not in reports]
            rs.silent.update(rs.seats[group.id][j] for j in silent)
            if silent and not final and len(silent) <= len(rs.spares[group.id]):
                for position in silent:
                    effects.extend(self._replace(rs, group, position, now))
                continue
            effects.extend(self._commit(group, now))
            if rs.phase is RoundPhase.CLOSED:  # the root left
                break
        return effects

    def _replace(self, rs: _RoundState, group: Group, position: int, now: float) -> list[Effect]:
        """A failed aggregator's seat goes to a backup; its inputs are sent again."""
        replacement = rs.spares[group.id].pop(0)
        rs.seats[group.id][position] = replacement
        report_at = now + self.secure.phase_timeout / 2
        effects: list[Effect] = [self._aggregate_request(rs, group, position, report_at)]
        notice = encode_reassign(Reassign(group.id, position, replacement))
        if group.level == 0:
            effects += [self._signed(m, Kind.RESEND_SHARE, notice) for m in group.members]
        else:
            for child in group.children:
                if rs.committed.get(child) is not None:
                    sender = rs.seats[child][position]
                    resend = encode_reassign(Reassign(child, position, replacement))
                    effects.append(self._signed(sender, Kind.RESEND_PARTIAL, resend))
        if group.parent is not None:
            parent = rs.seats[group.parent][position]
            effects.append(self._signed(parent, Kind.REASSIGN, notice))
            grandparent = rs.tree.group(group.parent).parent
            if grandparent is not None:  # it audits the parent's inputs
                auditor = rs.seats[grandparent][position]
                effects.append(self._signed(auditor, Kind.REASSIGN, notice))
        return effects

    def _audit_root(self, rs: _RoundState, now: float) -> list[Effect]:
        """Ask k-1 root positions for their evidence; which one is spared is decided
        only now, from the sums themselves, so no aggregator knew it in advance."""
        root = rs.tree.root
        digest = hashlib.sha256(
            b"".join(rs.root_parts[j].words.tobytes() for j in range(len(root.aggregators)))
        )
        spared = int.from_bytes(digest.digest()[:8], "little") % len(root.aggregators)
        rs.audits_due = {j for j in range(len(root.aggregators)) if j != spared}
        effects: list[Effect] = [
            self._signed(rs.seats[root.id][j], Kind.AUDIT_REQUEST, encode_labelled(root.id, j, b""))
            for j in sorted(rs.audits_due)
        ]
        at = now + self.secure.phase_timeout
        effects.append(StartTimer(timer=AuditDue(round=self.round), at=at))
        self._phase(rs, PhaseInput.ROOT_SUMS_IN)
        return effects

    def _signed(self, recipient: NodeId, kind: Kind, payload: bytes) -> Send:
        return self.wire.send(recipient, kind, self.round, payload, sealed=False)

    # -- closing -------------------------------------------------------------------
    @staticmethod
    def _included_groups(rs: _RoundState) -> dict[str, tuple[str, ...]]:
        """Leaf groups whose sums made it all the way to the root: id -> committed set."""
        found: dict[str, tuple[str, ...]] = {}
        for group in rs.tree.groups:
            committed = rs.committed.get(group.id)
            if group.level != 0 or not committed:
                continue
            node: Group | None = group
            ok = True
            while node is not None and node.parent is not None:
                parent_set = rs.committed.get(node.parent)
                if not parent_set or node.id not in parent_set:
                    ok = False
                    break
                node = rs.tree.group(node.parent)
            if ok:
                found[group.id] = committed
        return found

    def _included_contributors(self, rs: _RoundState) -> list[str]:
        """Contributors whose groups made it all the way to the root."""
        return sorted(m for members in self._included_groups(rs).values() for m in members)

    def _disclosure(self, rs: _RoundState) -> Disclosure:
        """The round's group sums, if the job discloses them (``protocol.groups``)."""
        if not self.secure.group_sums:
            return Disclosure()
        root = [rs.root_parts[j].words for j in range(len(rs.tree.root.aggregators))]
        included = self._included_groups(rs)
        return disclose(rs.group_parts, included, root, rs.ring, self.secure.disclosure)

    def _phase(self, rs: _RoundState, what: PhaseInput) -> None:
        try:
            rs.phase = SECURE_ROUND_TRANSITIONS[(rs.phase, what)]
        except KeyError:
            phase, rs.phase = rs.phase, RoundPhase.FAILED
            raise self._failed(f"secure round: {what.value} in {phase.value}") from None

    def _close_secure(self, now: float, why: PhaseInput) -> list[Effect]:
        assert self._rs is not None
        rs, self._rs = self._rs, None
        self.relay_roles = None
        self._phase(rs, why)
        timer_pending = why is not PhaseInput.DEADLINE  # else it just fired
        root = rs.tree.root
        blamed = tuple(f"{node} ({why})" for node, why in sorted(rs.blamed.items()))
        nothing: dict[str, Any] = {
            "mean_delta": None,
            "participants": 0,
            "samples": 0,
            "mean_loss": float("nan"),
            "timer_pending": timer_pending,
            "blamed": blamed,
            "epsilon": None if self.budget is None else self.budget.epsilon,
            "tree": rs.tree,
            "silent": tuple(sorted(rs.silent)),
        }
        self._exclude_tamperers(rs)
        if len(rs.root_parts) != len(root.aggregators) or rs.blamed:
            # Missing, or a sum failed (or missed) its audit: nothing trustworthy to apply.
            if self.counting:
                return self._statistics_closed(now, None, [], blamed, timer_pending)
            return self._finish_round(now, **nothing)
        included = self._included_contributors(rs)
        if not included and not self.counting:  # no contributor's update: nothing to release
            return self._finish_round(now, **nothing)
        epsilon = None
        if self.budget is not None and (not self.counting or self.private_statistics):
            # A total is released once decoded: only if the budget allows its noise.
            self._stopping = self.budget.refusal(len(self._selected), len(included))
            if self._stopping is not None and self.counting:
                return self._statistics_closed(
                    now, None, [], blamed, timer_pending, why=self._stopping
                )
            if self._stopping is not None:
                return self._finish_round(now, **nothing)
            epsilon = nothing["epsilon"] = self.budget.spend(len(self._selected), len(included))
        total = combine([rs.root_parts[j].words for j in range(len(root.aggregators))], rs.ring)
        values = decode(total, rs.ring)
        if self.counting:
            return self._statistics_closed(now, values, included, blamed, timer_pending)
        disclosed = self._disclosure(rs)
        p, q = self.weights.shape[0], self.secure.quality
        if self.budget is None:  # a private total's noise is as large as an update
            kept, broken = self._within_bounds(values, included, disclosed, rs.ring)
            blamed = nothing["blamed"] = (*blamed, *broken)
            if kept is None:
                return self._finish_round(now, **nothing)
            values, included, disclosed = kept
        # A private job weighs every contributor alike: its total weight is the exact
        # count of the included, not the noisy weight word (noise as large as an update's).
        weight = float(values[-1]) if self.budget is None else float(len(included))
        if weight <= 0 or not included:
            return self._finish_round(now, **nothing)
        mean = values[:p] / self._divisor(weight)
        if self.params.fednova:  # times tau_eff, the weighted mean of the local steps
            mean = mean * (float(values[p + q]) * self.secure.max_steps / weight)
        quality = RoundQuality.of(values[p : p + q], weight, self.secure.loss_cap) if q else None
        if self.secure.combine != "mean":  # too few groups: the plain mean stands
            mean = robust_update(disclosed.sums, self.secure.combine, self.secure.trim, mean)
        return self._finish_round(
            now,
            mean_delta=mean.astype(np.float32),
            participants=len(included),
            included=tuple(included),
            samples=round(weight * self.secure.max_weight) if self.budget is None else 0,
            mean_loss=float(values[-3] / weight) * self.secure.loss_cap,
            capped=max(round(float(values[-2])), 0),  # noise can take a count below 0
            timer_pending=timer_pending,
            blamed=blamed,
            epsilon=epsilon,
            group_sums=disclosed.sums,
            groups_withheld=disclosed.withheld,
            quality=quality,
            staleness=()
            if self.params.buffer is None
            else tuple(rs.staleness.get(n, 0) for n in included),
            tree=rs.tree,
            silent=nothing["silent"],
        )

    def _exclude_tamperers(self, rs: _RoundState) -> None:
        """Who forged a sum serves and trains no more in this job (the first verdict stands)."""
        for node, reason in sorted(rs.caught.items()):
            if node in self.nodes and node not in self.excluded:
                self.excluded[node] = (self.round + 1, f"tampered with a sum: {reason}")

    def _within_bounds(
        self,
        values: npt.NDArray[np.float64],
        included: list[str],
        disclosed: Disclosure,
        ring: Ring,
    ) -> tuple[_Bounded | None, tuple[str, ...]]:
        """The round's total, included and group sums, less the groups whose sums break
        an honest sum's bounds (``protocol.bounds``), and why each broke them; None when
        the total breaks them and no group sum says where (or none is left)."""
        p, clip, step = self.weights.shape[0], self.secure.clip, 2.0**-ring.frac_bits

        def problem(total: npt.NDArray[np.float64], n: int) -> str | None:
            return bound_problem(total, size=p, contributors=n, clip=clip, step=step)

        why = problem(values, len(included))
        if why is None:
            return (values, included, disclosed), ()
        broken = {
            g.group: (g, w) for g in disclosed.sums if (w := problem(g.total, len(g.members)))
        }
        kept = [g for g in disclosed.sums if g.group not in broken]
        if not broken or not kept:  # cannot tell where, or nothing is left
            return None, (f"the round's total ({why})",)
        blamed = tuple(
            f"group {g.group} of {', '.join(g.members)} ({w})" for g, w in broken.values()
        )
        total = np.sum([g.total for g in kept], axis=0)
        members = sorted(m for g in kept for m in g.members)
        return (total, members, Disclosure(sums=tuple(kept))), blamed

    def _statistics_closed(
        self,
        now: float,
        values: npt.NDArray[np.float64] | None,
        included: list[str],
        blamed: tuple[str, ...],
        timer_pending: bool,
        *,
        why: str | None = None,
    ) -> list[Effect]:
        """Hand the statistics round's total to the runtime, then open the next round.

        A total of fewer than ``min_updates`` included nodes (by the committed
        groups), or none at all, is no total: the job stops (training without
        its statistics would scale inputs by numbers nobody computed).
        """
        effects: list[Effect] = []
        if timer_pending:
            effects.append(CancelTimer(timer=RoundDeadline(round=self.round)))
        # Who is in the total is what the committed groups say, never the total's own
        # count word: one node could set that word to anything and so fail the job.
        counted = 0 if values is None else len(included)
        if values is None or not included or counted < self.params.min_updates:
            self._transition(CoordinatorInput.ROUND_DONE)
            self._transition(CoordinatorInput.JOB_DONE)
            why = why or (
                f"the statistics round totalled {counted} node(s) "
                f"(needed at least {self.params.min_updates}); no training without them"
            )
            effects.append(JobFinished(weights=self.weights, rounds=0, error=why))
            return effects
        total = values[:-TAIL]
        privacy = self.secure.privacy
        if privacy is not None and privacy.statistics_clip is not None:  # scaled back
            total = total * (privacy.statistics_clip / self.secure.clip)
        effects.append(
            StatisticsClosed(
                round=self.round,
                total=total,
                included=tuple(included),
                closed_at=now,
                blamed=blamed,
            )
        )
        self._transition(CoordinatorInput.ROUND_DONE)
        assert self.secure.statistics is not None
        if self.secure.statistics.only and self.round + 1 == self.first_training_round:
            self._transition(CoordinatorInput.JOB_DONE)
            effects.append(JobFinished(weights=self.weights, rounds=0))
        else:
            effects.extend(self._open_round(self.round + 1, now))
        return effects


#: A statistics request's weights: none.
_NO_WEIGHTS = np.zeros(0, np.float32)
