"""The contributor's machine: one per consenting node.

It holds no model: a train request names the round's shared global weights,
the machine asks its runtime to train (an effect), and turns the result into
an update for the coordinator. A result for a superseded round is dropped,
so a slow device can never submit stale work for the wrong round, and a
result finished after the deadline is not uploaded (only a short decline),
which saves the bandwidth of a model-sized message the coordinator would refuse.

A buffered job (``protocol.buffering``) is the exception: asked by a later
round while it still trains, the machine keeps training (``base`` is the round
whose model it trains from) and sends that update in the later round, weighted
by its staleness, unless it is too stale (then it trains afresh).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.crypto.envelope import reopen_sent
from tessera.crypto.fixedpoint import Ring
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import LocalProtocolError, RemoteProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.buffering import staleness_weight
from tessera.protocol.codec import decode_reassign, encode_shared
from tessera.protocol.effects import (
    Effect,
    Rejected,
    RequestLocalStatistics,
    RequestLocalTraining,
    Send,
)
from tessera.protocol.events import (
    Event,
    LocalStatisticsReady,
    LocalTrainingFailed,
    LocalUpdateReady,
    MessageReceived,
)
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import MAX_CONTRIBUTOR_ENVELOPE, TAIL
from tessera.protocol.messages import (
    Sealed,
    SecureAssignment,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)
from tessera.protocol.noise import PrivacyParams, private_statistics
from tessera.protocol.quality import QUALITY_HEAD, LocalQuality, quality_words
from tessera.protocol.sharing_job import SharedUpdate, ShareJob, share
from tessera.protocol.states import CONTRIBUTOR_TRANSITIONS, ContributorInput, ContributorState
from tessera.protocol.treecheck import TreeCheck
from tessera.protocol.wire import Wire


def weighted_vector(
    delta: npt.NDArray[np.floating[Any]],
    num_samples: int,
    loss: float,
    *,
    clip: float,
    max_weight: float,
    loss_cap: float,
    weigh: bool = True,
    rating: float = 1.0,
    quality: LocalQuality | None = None,
    quality_words_of: int = 0,
    steps: int = 0,
    steps_bound: float = 0.0,
) -> npt.NDArray[np.float64]:
    """What a contributor shares: ``w * clip(delta)``, then ``w * loss / loss_cap``, then
    1 if the loss was capped (else 0), then ``w``: ``TAIL`` words after the update.

    ``w = min(num_samples, max_weight) / max_weight`` weights the update (so the
    sum of these vectors, divided by the sum of the last words, is the weighted
    mean); the delta is clipped to L2 norm ``clip`` (just under it, so rounding
    cannot push a coordinate past the ring's bound); the loss is capped, and
    the count of capped losses is summed beside it, so a capped (diverging)
    round is seen, never hidden behind the cap. ``weigh`` false: ``w = 1`` (a
    private job weighs every contributor alike: its sensitivity is one clipped update).
    ``rating`` (in (0, 1], the contribution policy's) multiplies ``w``. A job
    asking ``quality_words_of`` words has them between the update and the tail
    (``protocol.quality``; ``ValueError`` when ``quality`` cannot fill them).

    FedNova (``steps_bound`` > 0, the job's public bound on local steps): the
    update is ``w * clip(delta) / tau`` with ``tau = min(steps, steps_bound)`` the
    local steps taken, and one more word, ``w * tau / steps_bound``, follows the
    quality words: the coordinator rescales the summed normalised updates by the
    weighted mean of tau (docs/architecture.md, "Deadline rounds").
    """
    p = delta.shape[0]
    fednova = steps_bound > 0
    if fednova and steps < 1:
        raise ValueError("a FedNova round needs the local steps taken")
    tau = float(min(steps, steps_bound)) if fednova else 1.0
    vector = np.empty(p + quality_words_of + fednova + TAIL, np.float64)
    scaled = vector[:p]  # built in place: the only model-sized array made here
    scaled[...] = delta  # exact: float32 to float64
    # The float64 norm by np.dot in slices of 8,192: no squared temporary, and no
    # BLAS threads for one vector (OpenBLAS threads a dot only above 10,000 elements).
    squares = 0.0
    for start in range(0, scaled.shape[0], 8192):
        part = scaled[start : start + 8192]
        squares += float(np.dot(part, part))
    norm = float(np.sqrt(squares))
    if norm > clip:
        scaled *= clip * (1 - 1e-9) / norm
    w = (min(num_samples, max_weight) / max_weight if weigh else 1.0) * rating
    if w != 1.0 or tau != 1.0:  # multiplying by 1.0 changes no bit
        scaled *= w / tau
    if quality_words_of:
        if quality is None:
            raise ValueError("this job asks for quality statistics and none were measured")
        vector[p : p + quality_words_of] = quality_words(
            quality, w=w, clip=clip, loss_cap=loss_cap, words=quality_words_of
        )
    if fednova:
        vector[p + quality_words_of] = w * tau / steps_bound
    vector[-3] = w * min(max(loss, 0.0), loss_cap) / loss_cap
    vector[-2] = 1.0 if not loss <= loss_cap else 0.0  # NaN counts as capped too
    vector[-1] = w
    return vector


def _update_problem(update: LocalUpdateReady) -> str | None:
    """Why a local result cannot be shared: training diverged, or had nothing to train on."""
    if update.num_samples <= 0:
        return "no records to train on"
    if not (math.isfinite(update.loss) and bool(np.isfinite(update.delta).all())):
        return (
            "local training diverged: its update or loss is not finite "
            "(the likely cause: recipe.lr too high for this model)"
        )
    return None


def _quality_problem(update: LocalUpdateReady, a: SecureAssignment | None) -> str | None:
    """Why the quality statistics a job asks for cannot be shared (``protocol.quality``)."""
    if a is None or not a.quality:
        return None
    if update.quality is None:
        return "this job asks for quality statistics and none were measured"
    if len(update.quality.labels) != a.quality - QUALITY_HEAD:
        return f"{len(update.quality.labels)} label counts, not the job's classes"
    return None


def _steps_problem(update: LocalUpdateReady, a: SecureAssignment | None) -> str | None:
    """Why a FedNova round's update cannot be shared: its local steps were not counted."""
    if a is None or not a.steps or update.steps >= 1:
        return None
    return "this job normalises by local steps (FedNova) and none were counted"


def _counted(statistics: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """What a contributor shares in a statistics round: its vector, then 0, 0 and 1.

    The tail matches a training round's (loss, capped, weight) words, so the
    total's last word counts the nodes whose statistics it holds.
    """
    return np.concatenate([statistics, [0.0, 0.0, 1.0]])


@dataclass(frozen=True, slots=True)
class SecureContext:
    """What a contributor needs for secure rounds: its keys and its peers' keys.

    The stochastic rounding into the ring draws its coins from ``rounding_seed``
    (``protocol.sharing_job``): keyed by the node's own signing key, job and
    round, so nobody else can predict them, and every runtime (simulator or
    deployed node) holding the same keys rounds the same update to the same
    words. The masks come from fresh OS randomness (``sharing_job.share``).
    """

    keys: NodeKeys
    directory: Mapping[NodeId, PublicKeys]
    tree_check: TreeCheck | None = None  # re-derive the tree and refuse a forged one
    # The job's distributed differential privacy: this node adds its share of the noise.
    privacy: PrivacyParams | None = None


class Contributor:
    __slots__ = (
        "_holders",
        "_sent",
        "assignment",
        "base",
        "deadline",
        "job_id",
        "max_staleness",
        "node",
        "round",
        "secure",
        "state",
        "wire",
    )

    def __init__(self, node: NodeId, job_id: JobId, secure: SecureContext | None = None) -> None:
        self.node = node
        self.job_id = job_id
        self.secure = secure
        self.assignment: SecureAssignment | None = None
        # This round's sealed shares and whom each was sealed for, kept (never re-split)
        # in case an aggregator is replaced: the ciphertext alone, read back with our
        # own key (``reopen_sent``), so a large model's share is held once, not twice.
        self._sent: tuple[tuple[bytes, ...], tuple[NodeId, ...]] | None = None
        # Who was ever given which position this round: one node, one position, so a
        # coordinator cannot walk a backup through several seats (SECURITY.md, finding 3).
        self._holders: dict[NodeId, int] = {}
        self.wire = Wire(node, job_id, secure.keys, secure.directory) if secure else None
        self.state = ContributorState.IDLE
        self.round = -1
        self.base = -1  # the round whose model the update in progress is trained from
        self.max_staleness: int | None = None  # the open request's (None: synchronous)
        self.deadline = 0.0

    @property
    def staleness(self) -> int:
        """How many rounds behind the open round the update in progress is."""
        return self.round - self.base

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, MessageReceived) and isinstance(event.message, Sealed):
            try:
                return self._on_resend(event.message.data)
            except RemoteProtocolError as exc:
                return [Rejected(sender=event.sender, reason=str(exc))]
        if isinstance(event, MessageReceived):
            return self._on_request(event)
        if isinstance(event, LocalUpdateReady | LocalStatisticsReady | LocalTrainingFailed):
            if not (self.state is ContributorState.TRAINING and event.round == self.base):
                return []  # the result of a superseded round is dropped
            return self._on_result(event, now)
        raise LocalProtocolError(f"contributor cannot handle {type(event).__name__}")

    def _on_request(self, event: MessageReceived) -> list[Effect]:
        msg = event.message
        if event.sender != COORDINATOR or not isinstance(msg, TrainRequest):
            return [Rejected(sender=event.sender, reason="only train requests are taken")]
        if msg.job_id != self.job_id:
            return [Rejected(sender=event.sender, reason=f"no consent to job {msg.job_id!r}")]
        if msg.round <= self.round:
            return [Rejected(sender=event.sender, reason=f"round {msg.round} is not new")]
        problem = self._assignment_problem(msg)
        if problem is not None:
            return [Rejected(sender=event.sender, reason=problem)]
        carry = (
            self.state is ContributorState.TRAINING
            and msg.max_staleness is not None
            and not msg.statistics
            and msg.round - self.base <= msg.max_staleness
        )
        self._transition(ContributorInput.CARRY_OVER if carry else ContributorInput.TRAIN_REQUEST)
        self.round, self.deadline, self.assignment = msg.round, msg.deadline, msg.secure
        self.max_staleness = msg.max_staleness
        self._sent = None
        self._holders = {}
        if carry:
            return []  # still training from round ``base``: its update goes to this round
        self.base = msg.round
        if msg.statistics:
            return [RequestLocalStatistics(round=msg.round)]
        check = self.secure.tree_check if self.secure is not None else None
        counted = 0 if check is None else check.statistics  # rounds before training
        return [
            RequestLocalTraining(
                round=msg.round,
                weights=msg.weights,
                config=msg.config,
                schedule_round=msg.round - counted,
                quality=msg.secure is not None and msg.secure.quality > 0,
            )
        ]

    def _on_result(
        self, event: LocalUpdateReady | LocalStatisticsReady | LocalTrainingFailed, now: float
    ) -> list[Effect]:
        """Share or submit what the runtime computed, or decline the round."""
        reason = event.reason if isinstance(event, LocalTrainingFailed) else "missed deadline"
        if isinstance(event, LocalStatisticsReady) and now <= self.deadline:
            problem = self._statistics_problem(event)
            if problem is None:
                self._transition(ContributorInput.UPDATE_READY)
                return self._seal_counted(event.vector)
            reason = problem
        elif isinstance(event, LocalUpdateReady) and now <= self.deadline:
            problem = (
                _update_problem(event)
                or _quality_problem(event, self.assignment)
                or _steps_problem(event, self.assignment)
            )
            if problem is not None:  # declined, never a crash nor a poisoned sum
                self._transition(ContributorInput.TRAINING_FAILED)
                declined = TrainingDeclined(job_id=self.job_id, round=self.round, reason=problem)
                return [Send(recipient=COORDINATOR, message=declined)]
            self._transition(ContributorInput.UPDATE_READY)
            if self.assignment is not None:
                return self._shares(event)
            update = UpdateSubmission(
                job_id=self.job_id,
                round=self.round,
                delta=event.delta,
                num_samples=event.num_samples,
                loss=event.loss,
                steps=event.steps,
                staleness=self.staleness,
            )
            return [Send(recipient=COORDINATOR, message=update)]
        self._transition(ContributorInput.TRAINING_FAILED)
        declined = TrainingDeclined(job_id=self.job_id, round=self.round, reason=reason)
        return [Send(recipient=COORDINATOR, message=declined)]

    def _assignment_problem(self, request: TrainRequest) -> str | None:
        if request.secure is None:  # a secure job's update leaves this node as shares only
            return None if self.secure is None else "a secure job's updates are sent as shares"
        if self.secure is None:
            return "this node has no keys for secure rounds"
        privacy = self.secure.privacy
        # A finer scale would shrink a private job's noise in real units.
        counted_privately = request.statistics and privacy and privacy.statistics_clip
        if (
            privacy
            and (not request.statistics or counted_privately)
            and request.secure.frac_bits != privacy.frac_bits
        ):
            return f"a private job's updates are encoded at {privacy.frac_bits} fraction bits"
        if privacy and request.secure.weight != 1:  # its total's divisor is the count
            return "a private job weighs every contributor alike"
        if request.secure.quality and (privacy or request.statistics):
            return "quality statistics are for a training round of a job without privacy"
        check = self.secure.tree_check
        if check is None:
            return None
        # Counting is a statistics round of a job that declares it, and only that:
        # never a training round's request turned into a count of this node's records.
        if request.statistics != (request.round < check.statistics):
            return "statistics are counted only in the statistics rounds the job declares"
        # The user consented to so many rounds: one more is one more release of its data
        # (and a private job's noise was calibrated for these rounds only).
        if request.round >= check.statistics + check.params.rounds:
            return f"round {request.round} is past the job's {check.params.rounds} training rounds"
        if request.secure.quality and not check.group_sums:
            return "this job discloses no group sums, so it asks for no quality statistics"
        return check.assignment_problem(self.node, request.round, request.secure)

    def _statistics_problem(self, ready: LocalStatisticsReady) -> str | None:
        """Why this node's statistics cannot be shared (the ring cannot hold them)."""
        a = self.assignment
        if a is None:
            return "a statistics round is secure"
        ring = Ring(bits=a.ring_bits, frac_bits=a.frac_bits, terms=a.ring_terms)
        v = ready.vector
        if v.dtype != np.float64 or v.ndim != 1 or not bool(np.isfinite(v).all()):
            return "statistics must be a finite float64 vector"
        if self._private_statistics is not None:  # scaled down to the update's clip
            return None
        if v.size and float(np.abs(v).max()) > ring.bound:
            return f"statistics over {ring.bound:.3g} in size do not fit the round's ring"
        return None

    @property
    def _private_statistics(self) -> float | None:
        """The L2 bound on this node's statistics vector if its job makes them private."""
        privacy = self.secure.privacy if self.secure is not None else None
        return None if privacy is None else privacy.statistics_clip

    def _seal_counted(self, statistics: npt.NDArray[np.float64]) -> list[Effect]:
        """Share this node's statistics: as counted, or, in a private job, scaled down as
        an update and with its share of the noise (``protocol.noise.private_statistics``)."""
        bound = self._private_statistics
        if bound is None:
            return self._seal_all(_counted(statistics))
        assert self.assignment is not None
        scaled = private_statistics(statistics, bound=bound, clip=self.assignment.clip)
        return self._seal_all(_counted(scaled), private=True)

    def _clip(self, a: SecureAssignment) -> float:
        """The L2 bound this contributor clips its update to: the assignment's."""
        return a.clip

    def _shares(self, update: LocalUpdateReady) -> list[Effect]:
        """Clip, weight, encode, split into k shares and seal each for its aggregator; in a
        buffered job, then tell the coordinator (in clear) that they are out, and how stale."""
        sends = self._seal_job(self._update_job(update), update.shared)
        if self.max_staleness is not None:
            assert self.wire is not None
            notice = encode_shared(self.staleness)
            sends.append(self.wire.send(COORDINATOR, Kind.SHARED, self.round, notice, sealed=False))
        return sends

    def _update_job(self, update: LocalUpdateReady) -> ShareJob:
        a = self.assignment
        assert a is not None
        vector = weighted_vector(
            update.delta,
            update.num_samples,
            update.loss,
            clip=self._clip(a),
            max_weight=a.max_weight,
            loss_cap=a.loss_cap,
            weigh=self.secure is None or self.secure.privacy is None,
            # FedBuff: times s(tau), the weight word too, so the weighted mean stays a mean.
            rating=a.weight * staleness_weight(self.staleness) if self.staleness else a.weight,
            quality=update.quality,
            quality_words_of=a.quality,
            steps=update.steps,
            steps_bound=a.steps,
        )
        return self._share_job(vector, private=True)

    def share_job(self, update: LocalUpdateReady) -> ShareJob | None:
        """The sharing work ``update`` would start if it arrived now, for a runtime that
        does that work ahead (``protocol.sharing_job``); None: it would start none."""
        if not (
            self.state is ContributorState.TRAINING
            and update.round == self.base
            and self.assignment is not None
            and self.secure is not None
        ):
            return None
        a = self.assignment
        if _update_problem(update) or _quality_problem(update, a) or _steps_problem(update, a):
            return None
        return self._update_job(update)

    def _seal_all(self, vector: npt.NDArray[np.float64], *, private: bool = False) -> list[Effect]:
        """Encode ``vector`` (with this node's share of a private job's noise, if
        ``private``: an update), split it into k shares and seal each for its aggregator."""
        return self._seal_job(self._share_job(vector, private=private), None)

    def _share_job(self, vector: npt.NDArray[np.float64], *, private: bool) -> ShareJob:
        a, ctx = self.assignment, self.secure
        assert a is not None
        assert ctx is not None
        ring = Ring(bits=a.ring_bits, frac_bits=a.frac_bits, terms=a.ring_terms)
        privacy, cohort = None, 0
        if private and ctx.privacy is not None:
            # The cohort is the public tree's, never the coordinator's word for it.
            check = ctx.tree_check
            cohort = check.tree(self.round).contributors if check is not None else a.ring_terms
            privacy = ctx.privacy
        return ShareJob(
            node=self.node,
            job_id=self.job_id,
            round=self.round,
            group=a.group,
            aggregators=tuple(a.aggregators),
            full_position=a.full_position,
            ring=ring,
            vector=vector,
            privacy=privacy,
            cohort=cohort,
        )

    def _seal_job(self, job: ShareJob, ahead: SharedUpdate | None) -> list[Effect]:
        """Send ``job``'s sealed shares: done ahead by the runtime if that was this very
        job, else done here (``protocol.sharing_job``)."""
        ctx = self.secure
        assert ctx is not None
        done = ahead if ahead is not None and ahead.job.same(job) else None
        if done is None:
            done = share(job, ctx.keys, ctx.directory)
        self._sent = (done.envelopes, job.aggregators)
        sends: list[Effect] = []
        for position, aggregator in enumerate(job.aggregators):
            self._holders.setdefault(aggregator, position)
            sealed = Sealed(done.envelopes[position])
            sends.append(Send(recipient=aggregator, message=sealed))
        return sends

    def _seal_share(self, position: int, aggregator: NodeId) -> Send:
        ctx, wire, sent = self.secure, self.wire, self._sent
        assert ctx is not None
        assert wire is not None
        assert sent is not None
        envelopes, recipients = sent
        original = ctx.directory[recipients[position]]
        payload = reopen_sent(envelopes[position], sender_keys=ctx.keys, recipient_public=original)
        self._holders.setdefault(aggregator, position)
        return wire.send(aggregator, Kind.SHARE, self.round, payload, sealed=True)

    def _on_resend(self, data: bytes) -> list[Effect]:
        """The coordinator replaced one of our aggregators: the same share, resealed."""
        if self.wire is None or self.assignment is None:
            raise RemoteProtocolError("no secure round in progress")
        env = self.wire.open(data, round=self.round, max_bytes=MAX_CONTRIBUTOR_ENVELOPE)
        if env.sender != COORDINATOR or env.kind != Kind.RESEND_SHARE:
            raise RemoteProtocolError("only the coordinator may redirect shares")
        r = decode_reassign(env.payload)
        a = self.assignment
        replacement = NodeId(r.replacement)
        if r.group != a.group or not 0 <= r.position < len(a.aggregators):
            raise RemoteProtocolError(f"not a position of our group {a.group}")
        if replacement not in a.backups:
            raise RemoteProtocolError(f"{replacement} is not one of the tree's backups")
        held = self._holders.get(replacement)
        if held is not None and held != r.position:
            raise RemoteProtocolError(
                f"{replacement} already held position {held} of {a.group} this round: "
                "one node never gets two of our shares"
            )
        seats = list(a.aggregators)
        seats[r.position] = replacement
        self.assignment = replace(a, aggregators=tuple(seats))
        if self._sent is None:
            return []  # still training: the share will go to the replacement directly
        return [self._seal_share(r.position, replacement)]

    def _transition(self, what: ContributorInput) -> None:
        try:
            self.state = CONTRIBUTOR_TRANSITIONS[(self.state, what)]
        except KeyError:
            state, self.state = self.state, ContributorState.FAILED
            msg = f"contributor: {what.value} not allowed in {state.value}"
            raise LocalProtocolError(msg) from None
