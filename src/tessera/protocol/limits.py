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
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tessera.crypto.documents import MAX_DOCUMENT_BYTES
from tessera.protocol.kinds import Kind

#: The largest model the protocol carries; the node catalogue's default bound. An audited
#: secure job is bounded lower, by its evidence (``evidence_bytes``): about 1M at the default tree.
MAX_PARAMETERS = 5_000_000
#: Ring words are at most 64 bits; a share or sum adds two words (loss, weight).
MAX_RING_BYTES = 8
#: Envelope header (ids, nonce), signature, AEAD tag and a payload header: generous.
ENVELOPE_SLACK = 64 << 10

#: One full share or partial sum of the largest model, sealed.
MAX_SHARE_BYTES = (MAX_PARAMETERS + 2) * MAX_RING_BYTES + ENVELOPE_SLACK
#: The largest envelope anyone accepts, of any kind. Every envelope travels
#: through the coordinator's mailbox, so this is also its HTTP body limit.
MAX_ENVELOPE_BYTES = 64 << 20
#: A control payload (reports, commitments, assignments): ids of one group.
MAX_CONTROL_BYTES = 1 << 22
#: A msgpack payload: a plaintext update is a model-sized float32 vector.
MAX_MSGPACK_BYTES = MAX_ENVELOPE_BYTES
#: What a contributor is ever sent besides its train request: a resend notice.
MAX_CONTRIBUTOR_ENVELOPE = 1 << 16
#: A plaintext update of the largest model: float32 words and a few fields, sealed.
MAX_UPDATE_BYTES = MAX_PARAMETERS * 4 + ENVELOPE_SLACK
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
        Kind.EVIDENCE: MAX_ENVELOPE_BYTES,  # the boxes of a whole group: several shares
        Kind.AUDIT_REQUEST: _NOTICE,
        Kind.ACCUSE: _NOTICE,
        Kind.TRAIN: MAX_ASSIGNMENT_BYTES,
        Kind.ASSIGN: MAX_ASSIGNMENT_BYTES,
        Kind.UPDATE: MAX_UPDATE_BYTES,
        Kind.DECLINE: MAX_ASSIGNMENT_BYTES,
    }
)


def evidence_bytes(length: int, *, k: int, group_size: int, fan_in: int) -> int:
    """The largest evidence an aggregator sends for ``length``-word vectors, audits on.

    Evidence holds every box the aggregator summed, verbatim: a leaf seat holds
    about ``group_size / k`` full shares (the full share rotates over the
    positions; a balanced group may be one over), a parent seat one sum per
    child group, up to ``fan_in``. Each box brings its envelope and its key.
    """
    full = max(-(-group_size // k) + 1, fan_in)
    boxes = max(group_size + 1, fan_in) + 1  # the inputs and the commitment
    return full * (length + 2) * MAX_RING_BYTES + boxes * ENVELOPE_SLACK


#: The coordinator's HTTP body: envelopes, or documents (smaller).
COORDINATOR_BODY = MAX_ENVELOPE_BYTES
#: The data provider's HTTP body: a records request carries three documents
#: (the job, the consent receipt, the signed request) and the field list.
PROVIDER_BODY = 4 * MAX_DOCUMENT_BYTES

MAX_DOCUMENT = MAX_DOCUMENT_BYTES  # re-exported: documents' own limit lives with their codec
