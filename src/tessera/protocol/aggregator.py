"""The aggregator's machine: one per node, serving any (group, position) roles.

Theory of operation: for each role the coordinator sends an
``AggregateRequest`` naming the expected inputs (the leaf group's
contributors, or the child groups below) and the parent that receives this
position's partial sum. Inputs arrive as sealed, signed envelopes; each is
opened, checked (right job, round, role, sender, ring, length; never twice)
and kept, as a 32-byte seed or a full vector, until the coordinator commits
the set to sum. The aggregator reports what it holds when every expected
input is in, or when its report timer fires; the coordinator intersects the
k positions' reports so that all k positions sum *exactly* the same set
(otherwise the masks would not cancel), and the aggregator then sums that set
and seals the sum for the parent's aggregator at the same position.

An aggregator only ever sees uniformly random shares and partial sums of
one position; it learns nothing about any update while fewer than all k
positions of a group collude. A commitment that drops the group (too few
contributors, a missing position) is obeyed by sending nothing.

Audits are optimistic (``protocol.audit``): an upper seat adds a child's sum
as soon as it arrives and checks the child's evidence beside the flow (every
child, or those its key draws); it accuses a child whose evidence fails and,
once its committed children are all checked, tells the coordinator
(``Kind.AUDITED``), which applies the round only after every such notice.

In a job that discloses its leaf groups' sums (``AggregateRequest.group_sums``,
checked against the job by the tree check; ``protocol.groups``), a leaf seat
sends the coordinator the same sealed words it sends up, once per seat and
round, and refuses to sum a commitment smaller than the job's floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from tessera.crypto.envelope import disclose_key, peek
from tessera.crypto.fixedpoint import Ring, Words
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import FullShare, Share, ShareAccumulator
from tessera.errors import InvalidEnvelope, LocalProtocolError, RemoteProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.accusation import copy_box, encode_proof, make_proof
from tessera.protocol.audit import Evidence, open_evidence, seal_evidence, verify_evidence
from tessera.protocol.codec import (
    Accusation,
    Commit,
    PartialPayload,
    Reassign,
    Report,
    decode_commit,
    decode_labelled,
    decode_named,
    decode_partial,
    decode_reassign,
    decode_share,
    encode_accusation,
    encode_labelled,
    encode_named,
    encode_partial,
    encode_report,
)
from tessera.protocol.effects import Effect, Rejected, Send, StartTimer
from tessera.protocol.events import Event, MessageReceived, TimerFired
from tessera.protocol.kinds import SEALED, Kind
from tessera.protocol.limits import MAX_ENVELOPE_BYTES
from tessera.protocol.messages import AggregateRequest, Sealed
from tessera.protocol.states import ROLE_TRANSITIONS, RoleInput, RoleState
from tessera.protocol.timers import ReportDue
from tessera.protocol.treecheck import TreeCheck
from tessera.protocol.wire import Wire

_FROM_COORDINATOR = (Kind.COMMIT, Kind.RESEND_PARTIAL, Kind.REASSIGN, Kind.REPORT_NOW)
_DRAW_SCALE = 2.0**-64


@dataclass
class AggregatorRole:
    request: AggregateRequest
    ring: Ring
    expected: dict[str, NodeId]  # input id -> the node that must send it
    inputs: dict[str, Share] = field(default_factory=dict)
    contributors: dict[str, int] = field(default_factory=dict)  # input id -> count below it
    state: RoleState = RoleState.COLLECTING
    parent: NodeId = COORDINATOR  # where the sum goes (a replacement may change it)
    output: bytes | None = None  # the encoded sum, kept until the round ends for a resend
    # Audit trail: each input's original box, and the commitment, for our auditor.
    boxes: dict[str, tuple[bytes, NodeId]] = field(default_factory=dict)
    commit_box: bytes | None = None
    included: tuple[str, ...] = ()  # what the commitment told us to sum
    # Built when first sent (most sums are never audited); sealed for its auditor.
    evidence_of: Evidence | None = None
    evidence: tuple[NodeId, bytes] | None = None
    requested: set[str] = field(default_factory=set)  # children asked for evidence
    # Optimistic audits (upper groups only): a child's sum is taken at once and kept
    # here until its evidence is checked; evidence that overtook its sum waits.
    audits: dict[str, tuple[PartialPayload, NodeId]] = field(default_factory=dict)
    early: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # (body, envelope)
    # Each audited child's input copies (its signed envelopes), as they reached us: its
    # evidence then only brings the keys, so no evidence transfer waits on the sum.
    copies: dict[str, dict[str, bytes]] = field(default_factory=dict)
    child_boxes: dict[str, bytes] = field(default_factory=dict)  # each child's sum, sealed
    copied_to: set[NodeId] = field(default_factory=set)  # where our own inputs went
    verdicts: dict[str, str | None] = field(default_factory=dict)  # child -> why it failed
    audited_sent: bool = False  # the coordinator was told our checks are done


_SUMMING = (RoleState.COLLECTING, RoleState.REPORTED)  # seats a commitment still applies to


def _seat(role: AggregatorRole, what: RoleInput) -> None:
    """Move a seat along ``ROLE_TRANSITIONS``; a miss is our bug: the seat fails."""
    try:
        role.state = ROLE_TRANSITIONS[(role.state, what)]
    except KeyError:
        state, role.state = role.state, RoleState.FAILED
        raise LocalProtocolError(f"aggregator seat: {what.value} in {state.value}") from None


class Aggregator:
    def __init__(
        self,
        node: NodeId,
        job_id: JobId,
        keys: NodeKeys,
        directory: Mapping[NodeId, PublicKeys],
        tree_check: TreeCheck | None = None,
    ) -> None:
        self.node = node
        self.job_id = job_id
        self.keys = keys
        self.directory = directory
        self.round = -1
        self.roles: dict[tuple[str, int], AggregatorRole] = {}
        self.wire = Wire(node, job_id, keys, directory)
        self.tree_check = tree_check  # refuse roles that are not the public tree's
        self.disclosed: set[tuple[str, int]] = set()  # seats whose group sum went out this round

    def handle(self, event: Event, now: float) -> list[Effect]:  # noqa: ARG002 - uniform API
        if isinstance(event, TimerFired):
            timer = event.timer
            if not isinstance(timer, ReportDue):
                raise LocalProtocolError(f"aggregators set no {type(timer).__name__} timers")
            role = self.roles.get((timer.group, timer.position))
            if role is None or timer.round != self.round or role.state is not RoleState.COLLECTING:
                return []  # stale, or reported already
            return self._report(role)
        if not isinstance(event, MessageReceived):
            raise LocalProtocolError(f"aggregator cannot handle {type(event).__name__}")
        msg = event.message
        if isinstance(msg, AggregateRequest):
            if event.sender != COORDINATOR:
                return [Rejected(sender=event.sender, reason="only the coordinator assigns roles")]
            return self._assign(msg)
        if isinstance(msg, Sealed):
            try:
                return self._on_sealed(msg.data)
            except (InvalidEnvelope, RemoteProtocolError) as exc:
                return [Rejected(sender=event.sender, reason=str(exc))]
        return [Rejected(sender=event.sender, reason=f"aggregators take no {type(msg).__name__}")]

    # -- roles -------------------------------------------------------------
    def _assign(self, req: AggregateRequest) -> list[Effect]:
        if req.job_id != self.job_id:
            return [Rejected(sender=COORDINATOR, reason=f"not serving job {req.job_id!r}")]
        if req.round < self.round:
            return [Rejected(sender=COORDINATOR, reason=f"round {req.round} is over")]
        if self.tree_check is not None:
            problem = self.tree_check.role_problem(self.node, req)
            if problem is not None:
                return [Rejected(sender=COORDINATOR, reason=problem)]
        if req.round > self.round:  # a new round: earlier roles are void
            self.round = req.round
            self.roles.clear()
            self.disclosed.clear()
            self.wire.replay.forget_before(req.round)
        held = [p for g, p in self.roles if g == req.group and p != req.position]
        if held:  # k positions of one group in one hand are the members' updates
            reason = f"already serving {req.group} position {held[0]} this round"
            return [Rejected(sender=COORDINATOR, reason=reason)]
        ring = Ring(bits=req.ring_bits, frac_bits=req.frac_bits, terms=req.ring_terms)
        expected = {
            i: s for i, s in zip(req.inputs, req.senders, strict=True) if i not in req.absent
        }
        self.roles[(req.group, req.position)] = AggregatorRole(
            req, ring, expected, parent=req.parent
        )
        timer = ReportDue(round=req.round, group=req.group, position=req.position)
        return [StartTimer(timer=timer, at=req.report_at)]

    def _on_sealed(self, data: bytes) -> list[Effect]:
        # A share or sum no auditor will see is opened without its signature check.
        opener = self.wire.open_input if self._never_evidence(data) else self.wire.open
        env = opener(data, round=self.round, max_bytes=MAX_ENVELOPE_BYTES)
        sender = NodeId(env.sender)
        if env.kind in SEALED and not env.sealed:
            raise RemoteProtocolError("shares, sums and evidence must be sealed")
        if env.kind == Kind.SHARE:
            share = decode_share(env.payload)
            role = self._role(share.group, share.position, leaf=True)
            self._check_input(role, share.group, sender, share.ring_bits, share.length)
            role.boxes[sender] = (data, sender)
            return self._copy(role, sender, data) + self._take(role, sender, share.share, 1)
        if env.kind == Kind.PARTIAL:
            return self._on_partial(decode_partial(env.payload), data, sender)
        if env.kind == Kind.EVIDENCE:
            return self._on_evidence(*decode_labelled(env.payload), sender, data)
        if env.kind == Kind.INPUT_COPY:
            return self._on_copy(*decode_labelled(env.payload), sender, data)
        if env.kind == Kind.AUDIT_REQUEST:  # from our auditor: the parent, or the coordinator
            group, position, _ = decode_labelled(env.payload)
            role = self._role(group, position, leaf=None)
            if sender != role.parent or not role.request.evidence_on_request:
                raise RemoteProtocolError(f"{sender} does not audit {group} position {position}")
            return self._send_evidence(role, sender)
        if env.kind in _FROM_COORDINATOR and sender != COORDINATOR:
            raise RemoteProtocolError("commitments and reassignments come from the coordinator")
        if env.kind == Kind.COMMIT:
            return self._on_commit(decode_commit(env.payload), data)
        if env.kind == Kind.RESEND_PARTIAL:
            return self._resend(decode_reassign(env.payload))
        if env.kind == Kind.REASSIGN:
            return self._reassign(decode_reassign(env.payload))
        if env.kind == Kind.REPORT_NOW:
            return self._report_now(*decode_labelled(env.payload))
        raise RemoteProtocolError(f"unexpected envelope kind {env.kind}")

    def _never_evidence(self, data: bytes) -> bool:
        """Whether ``data`` claims to be an input (the claim only picks how it is opened)
        while none of our seats this round may be asked for evidence: then its signature,
        a SHA-256 pass and an Ed25519 check, protects nobody. Else it is checked on
        arrival, so a contributor cannot frame us with a box its signature disowns."""
        try:
            kind = peek(data).kind
        except InvalidEnvelope:
            return False  # the full open says what is wrong
        if kind not in (Kind.SHARE, Kind.PARTIAL) or not self.roles:
            return False
        return not any(
            r.request.send_evidence or r.request.evidence_on_request for r in self.roles.values()
        )

    # -- audits ----------------------------------------------------------------
    def _on_partial(self, part: PartialPayload, data: bytes, sender: NodeId) -> list[Effect]:
        """A child group's sum at our position: taken at once; audited beside the flow."""
        role = self._parent_role_for(part.group, part.position)
        bits = part.words.dtype.itemsize * 8
        self._check_input(role, part.group, sender, bits, part.words.shape[0])
        role.boxes[part.group] = (data, sender)  # our own auditor will want it
        role.child_boxes[part.group] = data  # and so would a proof against the child
        effects = self._copy(role, part.group, data)
        if part.group in role.request.audit:  # audits are on for this job
            every = role.request.audit_fraction >= 1
            if every or self.draws_audit(role, part.group):
                role.audits[part.group] = (part, sender)
                if not every:  # drawn: the child learns it only now
                    role.requested.add(part.group)
                    ask = encode_labelled(part.group, part.position, b"")
                    effects.append(self._send(sender, Kind.AUDIT_REQUEST, ask, sealed=False))
        effects += self._take(role, part.group, FullShare(part.words), part.contributors)
        if part.group in role.early:
            effects += self._audit_child(role, part.group, role.early.pop(part.group))
        return effects

    def _copy(self, role: AggregatorRole, input_id: str, box: bytes) -> list[Effect]:
        """Forward an input's box to our auditor as it arrives, if every sum of ours is
        audited (or our auditor is the coordinator, which picks after the fact)."""
        req = role.request
        if not (req.send_evidence or (req.evidence_on_request and role.parent == COORDINATOR)):
            return []
        role.copied_to.add(role.parent)
        body = encode_labelled(req.group, req.position, encode_named(input_id, box))
        return [self._send(role.parent, Kind.INPUT_COPY, body, sealed=False)]

    def _on_copy(
        self, group: str, position: int, body: bytes, sender: NodeId, data: bytes
    ) -> list[Effect]:
        role = self._parent_role_for(group, position)
        input_id, _ = decode_named(body)
        if role.expected.get(group) != sender or group not in role.request.audit:
            raise RemoteProtocolError(f"{sender} has no inputs of {group} for us to audit")
        if input_id not in role.request.audit[group][1]:
            raise RemoteProtocolError(f"{input_id} is not an input of {group}")
        held = role.copies.setdefault(group, {})
        if input_id in held:
            raise RemoteProtocolError(f"{input_id}'s box was forwarded already")
        held[input_id] = data  # signed by the child: proof of what it forwarded
        return []

    def _on_evidence(
        self, group: str, position: int, body: bytes, sender: NodeId, data: bytes
    ) -> list[Effect]:
        role = self._parent_role_for(group, position)
        if role.expected.get(group) != sender or group in role.verdicts or group in role.early:
            raise RemoteProtocolError(f"{sender} owes no evidence for {group}")
        if group in role.audits:
            return self._audit_child(role, group, (body, data))
        if role.request.audit_fraction < 1 or group in role.inputs:
            raise RemoteProtocolError(f"no evidence was asked of {sender} for {group}")
        role.early[group] = (body, data)  # it overtook the sum it vouches for
        return []

    def _audit_child(
        self, role: AggregatorRole, child: str, evidence_in: tuple[bytes, bytes]
    ) -> list[Effect]:
        """Check a taken child's sum against its evidence; accuse it if they differ,
        with the child's own signed messages as proof (``protocol.accusation``)."""
        part, sender = role.audits.pop(child)
        is_leaf, inputs = role.request.audit[child]
        body, data = evidence_in
        copies = role.copies.pop(child, {})
        effects: list[Effect] = []
        try:
            evidence = open_evidence(
                body,
                job_id=self.job_id,
                round=self.round,
                audited=sender,
                keys=self.keys,
                auditor=self.node,
                directory=self.directory,
                copies={i: copy_box(c)[1] for i, c in copies.items()},
            )
            verify_evidence(
                evidence,
                audited=sender,
                partial=part,
                expected=inputs,
                leaf=is_leaf,
                ring=role.ring,
                length=role.request.length,
                directory=self.directory,
                job_id=self.job_id,
                round=self.round,
            )
            role.verdicts[child] = None
        except RemoteProtocolError as exc:
            # Its sum went up already: the coordinator discards the round.
            role.verdicts[child] = str(exc)
            accusation = Accusation(child, role.request.position, sender, str(exc))
            proof = make_proof(
                partial=role.child_boxes[child],
                evidence=data,
                body=body,
                copies=copies.values(),
                keys=self.keys,
                accused=self.directory[sender],
            )
            payload = encode_accusation(accusation, encode_proof(proof))
            effects.append(self._send(COORDINATOR, Kind.ACCUSE, payload, sealed=False))
        return effects + self._audited(role)

    def _audited(self, role: AggregatorRole) -> list[Effect]:
        """Tell the coordinator, once, that every audit of the summed inputs is done."""
        if role.audited_sent or role.state is not RoleState.SUMMED or not role.request.audit:
            return []
        if any(child in role.audits for child in role.included):
            return []  # evidence still owed
        if any(role.verdicts.get(child) is not None for child in role.included):
            # A failed check was accused; the notice would vouch for it, and were the
            # accusation lost, the round would be applied. Without it, the coordinator
            # discards the round at its audit deadline whatever reaches it.
            return []
        role.audited_sent = True
        role.audits.clear()  # children left out of the sum need no verdict
        done = encode_labelled(role.request.group, role.request.position, b"")
        return [self._send(COORDINATOR, Kind.AUDITED, done, sealed=False)]

    def draws_audit(self, role: AggregatorRole, child: str) -> bool:
        """Whether we audit ``child``'s sum: drawn with our key once the sum is here.

        The child cannot predict the draw (it needs our signing key), so it
        cannot forge only the sums that go unchecked; the draw replays the same.
        """
        context = "\x00".join(
            (self.job_id, str(self.round), role.request.group, str(role.request.position), child)
        )
        u = int.from_bytes(self.keys.draw(context.encode()), "big") >> 192  # 64 bits
        return u * _DRAW_SCALE < role.request.audit_fraction

    def _evidence(self, role: AggregatorRole) -> Evidence:
        assert role.commit_box is not None
        held = sorted((i, box) for i, box in role.boxes.items() if i in role.included)
        boxes = tuple(
            (
                box,
                disclose_key(box, recipient_keys=self.keys, sender_public=self.directory[sender]),
            )
            for _, (box, sender) in held
        )
        return Evidence(role.commit_box, boxes, tuple(i for i, _ in held))

    def _send_evidence(self, role: AggregatorRole, auditor: NodeId) -> list[Effect]:
        if role.output is None:
            raise RemoteProtocolError(f"{role.request.group} has not summed yet")
        if role.evidence_of is None:
            role.evidence_of = self._evidence(role)
            role.boxes.clear()  # the evidence holds what an auditor needs
        if role.evidence is None or role.evidence[0] != auditor:  # a replacement: reseal
            body = seal_evidence(
                role.evidence_of,
                job_id=self.job_id,
                round=self.round,
                sender=self.node,
                auditor=auditor,
                keys=self.keys,
                directory=self.directory,
                inline=role.copied_to != {auditor},  # it holds copies of every box
            )
            role.evidence = (auditor, body)
        payload = encode_labelled(role.request.group, role.request.position, role.evidence[1])
        return [self._send(auditor, Kind.EVIDENCE, payload, sealed=False)]

    def _role(self, group: str, position: int, *, leaf: bool | None) -> AggregatorRole:
        role = self.roles.get((group, position))
        if role is None or (leaf is not None and role.request.leaf != leaf):
            raise RemoteProtocolError(
                f"not serving {group} position {position} in round {self.round}"
            )
        return role

    def _parent_role_for(self, child: str, position: int) -> AggregatorRole:
        for (_, pos), role in self.roles.items():
            if pos == position and child in role.expected and not role.request.leaf:
                return role
        raise RemoteProtocolError(f"no role here expects {child} position {position}")

    @staticmethod
    def _check_input(
        role: AggregatorRole, key: str, sender: NodeId, bits: int, length: int
    ) -> None:
        input_id = key if not role.request.leaf else sender
        if role.expected.get(input_id) != sender:
            raise RemoteProtocolError(f"{sender} is not an expected input of {role.request.group}")
        if bits != role.ring.bits or length != role.request.length:
            raise RemoteProtocolError("input does not match the round's ring or model size")
        if input_id in role.inputs:
            raise RemoteProtocolError(f"{input_id} already sent its input")
        if role.state is not RoleState.COLLECTING:
            raise RemoteProtocolError(f"{input_id} arrived after the report")

    def _take(
        self, role: AggregatorRole, input_id: str, share: Share, contributors: int
    ) -> list[Effect]:
        _seat(role, RoleInput.INPUT)
        role.inputs[input_id] = share
        role.contributors[input_id] = contributors
        if len(role.inputs) == len(role.expected):
            return self._report(role)
        return []

    def _report(self, role: AggregatorRole, why: RoleInput = RoleInput.REPORT) -> list[Effect]:
        _seat(role, why)
        report = Report(role.request.group, role.request.position, tuple(role.inputs))
        return [self._send(COORDINATOR, Kind.REPORT, encode_report(report), sealed=False)]

    def _report_now(self, group: str, position: int, _: object) -> list[Effect]:
        """The coordinator closed the round's training phase: report what we hold."""
        role = self._role(group, position, leaf=True)
        if role.state is not RoleState.COLLECTING:
            return []  # reported already
        return self._report(role, RoleInput.REPORT_NOW)

    # -- failed aggregators -------------------------------------------------
    def _resend(self, r: Reassign) -> list[Effect]:
        """Our parent failed: send this position's sum to its replacement."""
        role = self._role(r.group, r.position, leaf=None)
        role.parent = NodeId(r.replacement)
        if role.output is None:
            return []  # not summed yet: the sum will go to the replacement
        effects: list[Effect] = [self._send(role.parent, Kind.PARTIAL, role.output, sealed=True)]
        if role.request.send_evidence:
            effects += self._send_evidence(role, role.parent)
        return effects

    def _reassign(self, r: Reassign) -> list[Effect]:
        """A (grand)child's aggregator failed: its sum now comes from the replacement."""
        replacement, found = NodeId(r.replacement), False
        for (_, position), role in self.roles.items():
            if position != r.position or role.request.leaf:
                continue
            if r.group in role.expected:  # we consume its sum
                if r.group in role.inputs or role.state is not RoleState.COLLECTING:
                    raise RemoteProtocolError(f"{r.group} can no longer be reassigned")
                role.expected[r.group] = replacement
                found = True
            for child, (is_leaf, inputs) in role.request.audit.items():
                if not is_leaf and r.group in inputs:  # we audit the child that consumes it
                    audit = dict(role.request.audit)
                    audit[child] = (is_leaf, {**inputs, r.group: replacement})
                    role.request = replace(role.request, audit=audit)
                    found = True
        if not found:
            raise RemoteProtocolError(f"no role here expects {r.group} position {r.position}")
        return []

    # -- commitment and summation -------------------------------------------
    def _on_commit(self, commit: Commit, box: bytes) -> list[Effect]:
        effects: list[Effect] = []
        for (group, _), role in list(self.roles.items()):
            if group == commit.group and role.state in _SUMMING:
                effects.extend(self._sum(role, commit, box))
            elif commit.included is None and commit.group in role.expected:
                # a child group was dropped: stop waiting for it
                del role.expected[commit.group]
                if role.state is RoleState.COLLECTING and len(role.inputs) == len(role.expected):
                    effects.extend(self._report(role))
        return effects

    def _sum(self, role: AggregatorRole, commit: Commit, box: bytes) -> list[Effect]:
        floor = role.request.group_sums if role.request.leaf else 0
        # Every leaf sum covers the tree's min_group: else a coordinator committing one
        # contributor at one leaf (and nothing else up the tree) decodes one update.
        least = (
            self.tree_check.tree_params.min_group if role.request.leaf and self.tree_check else 0
        )
        if commit.included is not None:  # refused before anything changes
            missing = [i for i in commit.included if i not in role.inputs]
            if missing:
                raise RemoteProtocolError(f"commitment names inputs never received: {missing[:3]}")
            if len(commit.included) < floor:  # the total less the others' sums would be it
                raise RemoteProtocolError(
                    f"a commitment of {len(commit.included)} is below the job's floor of "
                    f"{floor} for a disclosed group sum"
                )
            if len(commit.included) < least:
                raise RemoteProtocolError(
                    f"a leaf commitment of {len(commit.included)} is below the tree's "
                    f"min_group of {least}: the sum could be one contributor's update"
                )
        _seat(role, RoleInput.SUM if commit.included is not None else RoleInput.LEAVE)
        role.commit_box = box
        inputs, role.inputs = role.inputs, {}
        if commit.included is None:
            return []  # the group left the round
        count = sum(role.contributors[i] for i in commit.included)
        words = self.partial_sum(role, [inputs[i] for i in sorted(commit.included)])
        req = role.request
        role.output = encode_partial(req.group, req.position, count, words)
        role.included = commit.included
        if not (req.send_evidence or req.evidence_on_request):
            role.boxes.clear()  # nobody will audit this sum
        effects: list[Effect] = [self._send(role.parent, Kind.PARTIAL, role.output, sealed=True)]
        if floor and (req.group, req.position) not in self.disclosed:  # the same words, once
            self.disclosed.add((req.group, req.position))
            told = self.disclosed_words(role, words)
            payload = encode_partial(req.group, req.position, count, told)
            effects.append(self._send(COORDINATOR, Kind.GROUP_SUM, payload, sealed=True))
        if req.send_evidence:  # root and sampled audits ask for the evidence instead
            effects += self._send_evidence(role, role.parent)
        return effects + self._audited(role)  # no evidence owed: done at once

    def partial_sum(self, role: AggregatorRole, shares: list[Share]) -> Words:
        """This position's sum of the committed inputs (adversary tests override it)."""
        acc = ShareAccumulator(role.request.length, role.ring)
        for share in shares:
            acc.add(share)
        return acc.value

    def disclosed_words(self, role: AggregatorRole, words: Words) -> Words:  # noqa: ARG002
        """What this seat tells the coordinator its group's sum is: the sum it sent up
        (adversary tests override it)."""
        return words

    def _send(self, recipient: NodeId, kind: Kind, payload: bytes, *, sealed: bool) -> Send:
        return self.wire.send(recipient, kind, self.round, payload, sealed=sealed)
