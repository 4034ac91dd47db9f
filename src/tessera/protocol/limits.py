"""Every size limit, in one table, each derived from what it must hold.

A party refuses anything larger before parsing it, and the limits agree
along each path: a message one party may send is one the next party on its
way (the coordinator's HTTP body limit, then the recipient's envelope limit)
accepts. Before this table they disagreed: aggregators took envelopes of 512
MiB that the coordinator's mailbox (64 MiB bodies) could never relay, and a
plaintext update of the largest model the node catalogue allows (20 MB of
float32) was over the 16 MiB msgpack limit.

``ENVELOPE_LIMITS`` gives each kind its own bound, which the relay applies
before it stores anything and every machine before it checks a signature:
a kind that lists ids (a report, a commitment) is never megabytes, and a
kind no party reads is refused at the relay instead of filling a mailbox.
``relay_bounds`` narrows them for one job: only the kinds a node sends in
it, each no larger than the job's model makes it, and a quota per sender
and round.

The largest envelopes (a share, a sum or the evidence of a model of millions
of parameters: hundreds of MB) never sit whole in the coordinator's memory:
its mailbox takes them as a stream, checks the header (and so the kind's and
the job's bound) from the first bytes and the signature as the rest goes by,
and keeps them in files (``coordinator.intake``, ``storage.blobs``). Only the
mail route takes bodies of ``MAIL_BODY``; every other route ``COORDINATOR_BODY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tessera.crypto.documents import MAX_DOCUMENT_BYTES
from tessera.protocol.kinds import Kind

#: The largest model the protocol carries: issue 14's 10M-parameter target (the
#: 10,483,210-parameter digits MLP of examples/digits_large.toml and its quality words)
#: with a sixth to spare. The node catalogue's default bound is lower (5M): a node's
#: owner raises it. An audited secure job is bounded by an accusation's proof too
#: (``accusation_bytes`` against ``MAX_ACCUSATION_BYTES``: a sum and the evidence): about
#: 5.3M words at the default tree, all of them in a narrow one (groups of up to 2k, fan-in 3).
MAX_PARAMETERS = 12_000_000
#: Words after the update in what a contributor shares: loss, capped, weight.
TAIL = 3

#: Ring words are at most 64 bits; a share or sum adds TAIL words (loss, capped, weight).
MAX_RING_BYTES = 8
#: Envelope header (ids, nonce), signature, AEAD tag and a payload header: generous.
ENVELOPE_SLACK = 64 << 10

#: One full share or partial sum of the largest model, sealed.
MAX_SHARE_BYTES = (MAX_PARAMETERS + TAIL) * MAX_RING_BYTES + ENVELOPE_SLACK


def evidence_bytes(length: int, *, k: int, group_size: int, fan_in: int) -> int:
    """The largest evidence an aggregator sends for ``length``-word vectors, audits on.

    Evidence holds every box the aggregator summed, verbatim: a leaf seat holds
    about ``group_size / k`` full shares (the full share rotates over the
    positions; a balanced group may be one over), a parent seat one sum per
    child group, up to ``fan_in``. Each box brings its envelope and its key.
    """
    full = max(-(-group_size // k) + 1, fan_in)
    boxes = max(group_size + 1, fan_in) + 2  # the inputs, the commitment, the sealed keys
    return full * (length + TAIL) * MAX_RING_BYTES + boxes * ENVELOPE_SLACK


def accusation_bytes(length: int, *, k: int, group_size: int, fan_in: int) -> int:
    """The largest accusation, with its proof (``protocol.accusation``): the accused's
    sum, its evidence, and its input copies, each re-wrapped (a box comes either inline
    in the evidence or as a copy, never both)."""
    share = (length + TAIL) * MAX_RING_BYTES + ENVELOPE_SLACK
    copies = max(group_size + 1, fan_in)
    evidence = evidence_bytes(length, k=k, group_size=group_size, fan_in=fan_in)
    return share + evidence + (copies + 1) * ENVELOPE_SLACK


#: The evidence of the largest model in the narrowest audited tree (fan-in 3, the
#: least a tree has; groups of up to 2k): three full vectors. A job whose tree makes
#: more is refused at submission (lower group_size or fan_in, or a smaller model).
MAX_EVIDENCE_BYTES = evidence_bytes(MAX_PARAMETERS, k=3, group_size=6, fan_in=3)
#: An accusation about such evidence: the evidence, the accused's sum and the copies' wraps.
MAX_ACCUSATION_BYTES = accusation_bytes(MAX_PARAMETERS, k=3, group_size=6, fan_in=3)
#: The largest envelope anyone accepts, of any kind (an accusation: the bulkiest). Every
#: envelope travels through the coordinator's mailbox, so this is its mail body limit.
MAX_ENVELOPE_BYTES = MAX_ACCUSATION_BYTES
#: A control payload (reports, commitments, assignments): ids of one group.
MAX_CONTROL_BYTES = 1 << 22
#: A plaintext update of the largest model: float32 words and a few fields, sealed.
MAX_UPDATE_BYTES = MAX_PARAMETERS * 4 + ENVELOPE_SLACK
#: A msgpack payload: the largest is a plaintext update, a model-sized float32 vector.
MAX_MSGPACK_BYTES = MAX_UPDATE_BYTES
#: What a contributor is ever sent besides its train request: a resend notice.
MAX_CONTRIBUTOR_ENVELOPE = 1 << 16
#: A train request or an assignment: an assignment lists a group's inputs and its
#: audit map (the old msgpack limit, which no real one came near).
MAX_ASSIGNMENT_BYTES = 1 << 24
#: A small notice (report, commitment, reassignment, accusation, audit request), sealed.
_NOTICE = MAX_CONTROL_BYTES + ENVELOPE_SLACK

#: The largest envelope of each kind: the relay and the receiving machine refuse more.
ENVELOPE_LIMITS: Mapping[Kind, int] = MappingProxyType(
    {
        Kind.SHARE: MAX_SHARE_BYTES,
        Kind.PARTIAL: MAX_SHARE_BYTES,
        Kind.REPORT: _NOTICE,
        Kind.COMMIT: _NOTICE,
        Kind.RESEND_SHARE: MAX_CONTRIBUTOR_ENVELOPE,
        Kind.RESEND_PARTIAL: _NOTICE,
        Kind.REASSIGN: _NOTICE,
        Kind.EVIDENCE: MAX_EVIDENCE_BYTES,  # the boxes of a whole group: several shares
        Kind.AUDIT_REQUEST: _NOTICE,
        Kind.ACCUSE: MAX_ACCUSATION_BYTES,  # with its proof: the accused's sum and evidence
        Kind.AUDITED: _NOTICE,
        Kind.INPUT_COPY: MAX_SHARE_BYTES + ENVELOPE_SLACK,  # a share or a sum, re-wrapped
        Kind.GROUP_SUM: MAX_SHARE_BYTES,  # a leaf's partial sum, to the coordinator
        Kind.TRAIN: MAX_ASSIGNMENT_BYTES,
        Kind.ASSIGN: MAX_ASSIGNMENT_BYTES,
        Kind.UPDATE: MAX_UPDATE_BYTES,
        Kind.DECLINE: MAX_ASSIGNMENT_BYTES,
        Kind.SHARED: _NOTICE,  # a buffered job's: a staleness
        Kind.REPORT_NOW: _NOTICE,
    }
)


#: The coordinator's mail route takes any envelope, streamed (module docstring).
MAIL_BODY = MAX_ENVELOPE_BYTES
#: Every other route of the coordinator: documents, or an AI provider's initial weights
#: (a safetensors file of the largest model: its float32 words and a short header).
COORDINATOR_BODY = MAX_UPDATE_BYTES
#: The data provider's HTTP body: a records request carries three documents
#: (the job, the consent receipt, the signed request) and the field list.
PROVIDER_BODY = 4 * MAX_DOCUMENT_BYTES

MAX_DOCUMENT = MAX_DOCUMENT_BYTES  # re-exported: documents' own limit lives with their codec


#: Kinds a node only ever sends to the coordinator, and kinds it only sends to another node.
TO_COORDINATOR_ONLY = frozenset(
    {Kind.UPDATE, Kind.DECLINE, Kind.REPORT, Kind.ACCUSE, Kind.GROUP_SUM, Kind.SHARED}
)
TO_NODE_ONLY = frozenset({Kind.SHARE, Kind.AUDIT_REQUEST})
#: A decline carries a job id, a round and a reason of at most 500 characters.
MAX_DECLINE_BYTES = MAX_CONTRIBUTOR_ENVELOPE


@dataclass(frozen=True, slots=True)
class RelayBounds:
    """What the relay takes from a node in one job: kinds, per-kind sizes, a round's quota."""

    limits: Mapping[Kind, int]
    count: int  # envelopes one sender may post in one round
    bytes: int  # and their total size


def relay_bounds(
    n_weights: int,
    *,
    secure: bool,
    k: int = 0,
    group_size: int = 0,
    fan_in: int = 0,
    audit: bool,
    group_sums: bool = False,
) -> RelayBounds:
    """The bounds for a job of ``n_weights`` weights, from what its protocol sends.

    A plaintext node sends one update or one decline a round. A secure node
    may hold a contributor's seat (k shares, resent to replacements) and
    aggregator seats (reports, partial sums, evidence, audit requests and
    accusations about up to ``fan_in`` children; with ``group_sums``, a leaf
    seat's sum to the coordinator too): the quota allows twice that, and no
    kind a node never sends.
    """
    share = min((n_weights + TAIL) * MAX_RING_BYTES + ENVELOPE_SLACK, MAX_SHARE_BYTES)
    if not secure:
        update = min(n_weights * 4 + ENVELOPE_SLACK, MAX_UPDATE_BYTES)
        limits = {Kind.UPDATE: update, Kind.DECLINE: MAX_DECLINE_BYTES}
        return RelayBounds(MappingProxyType(limits), count=4, bytes=2 * update)
    limits = {
        Kind.SHARE: share,
        Kind.PARTIAL: share,
        Kind.REPORT: _NOTICE,
        Kind.DECLINE: MAX_DECLINE_BYTES,
    }
    if audit:
        evidence = evidence_bytes(n_weights, k=k, group_size=group_size, fan_in=fan_in)
        accusation = accusation_bytes(n_weights, k=k, group_size=group_size, fan_in=fan_in)
        limits |= {
            Kind.EVIDENCE: min(evidence, MAX_EVIDENCE_BYTES),
            Kind.AUDIT_REQUEST: _NOTICE,
            Kind.ACCUSE: min(accusation, MAX_ACCUSATION_BYTES),
            Kind.AUDITED: _NOTICE,
            Kind.INPUT_COPY: share + ENVELOPE_SLACK,
        }
    disclosed = 0
    if group_sums:
        limits[Kind.GROUP_SUM] = share
        disclosed = 1
    copies = max(group_size, fan_in) if audit else 0  # each input forwarded to the auditor
    sends = 2 * (2 * k + 3 * fan_in + 6 + disclosed + copies)  # + audit verdicts
    size = 2 * (
        (2 * k + 2 + disclosed + copies) * share
        + limits.get(Kind.EVIDENCE, 0)
        + limits.get(Kind.ACCUSE, 0)  # the round closes on the first one
        + copies * ENVELOPE_SLACK
        + 6 * _NOTICE
    )
    return RelayBounds(MappingProxyType(limits), count=sends, bytes=size)
