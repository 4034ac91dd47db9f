"""One registry of what crosses the wire: every envelope kind, the codec of its payload, and why.

Every message between parties is a signed envelope (``crypto.envelope``)
whose header names its kind in one byte; the kinds of the secure protocol
and of the control messages share that byte, so they live in one enum here
and a number can never mean two things. Each kind's payload has exactly one
codec, chosen for its purpose:

- ``RING`` (``protocol.codec``): a small struct header and raw little-endian
  ring words. Shares and partial sums (and a leaf group's sum disclosed to
  the coordinator, the same words as its partial sum) are model-sized
  vectors: no per-element overhead, and one ``np.frombuffer`` once every
  length has been checked.
- ``JSON`` (``protocol.codec``): canonical JSON. Reports, commitments,
  reassignments and accusations are short lists of ids that an auditor may
  want to read as they are.
- ``LABELLED`` (``protocol.codec`` framing, ``protocol.audit`` body): a group
  and position tag before opaque bytes. Evidence carries other parties'
  sealed boxes verbatim (re-encoding them would break their signatures).
- ``MSGPACK`` (``protocol.control``): versioned msgpack maps, checked field
  by field. Train requests, role assignments, plaintext updates and declines
  are typed records holding floats and a float vector.

Signed *documents* (jobs, registrations, consent, requests) are not
envelopes: canonical JSON that people and auditors read, with their kinds in
``crypto.documents.DocumentKind``. Size limits for all of them are in
``protocol.limits``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, IntEnum
from types import MappingProxyType

from tessera.crypto.documents import DocumentKind


class Codec(Enum):
    RING = "struct header + little-endian ring words"
    JSON = "canonical JSON"
    LABELLED = "group/position tag + opaque bytes"
    MSGPACK = "versioned msgpack map"


class Kind(IntEnum):
    """Every envelope kind; the number is the header's kind byte (never reuse one)."""

    SHARE = 1  # contributor -> aggregator: one share of its update
    PARTIAL = 2  # aggregator -> parent aggregator (or coordinator at the root): a partial sum
    REPORT = 3  # aggregator -> coordinator: the inputs it holds
    COMMIT = 4  # coordinator -> aggregators: exactly which inputs to sum (or none)
    RESEND_SHARE = 5  # coordinator -> contributor: send share j again, to a replacement
    RESEND_PARTIAL = 6  # coordinator -> child aggregator: send your sum to a replacement
    REASSIGN = 7  # coordinator -> parent aggregator: a child's sum now comes from a replacement
    EVIDENCE = 8  # aggregator -> its auditor: the boxes it summed (clear), their keys (sealed)
    AUDIT_REQUEST = 9  # auditor (parent aggregator, or coordinator at the root) -> audited
    ACCUSE = 10  # auditor -> coordinator: this aggregator's sum does not match its evidence
    GROUP_SUM = 11  # leaf aggregator -> coordinator: its partial sum again (group-sum jobs)
    AUDITED = 12  # auditor -> coordinator: its checks of this seat's inputs are done
    INPUT_COPY = 13  # aggregator -> its auditor: an input box as it arrived (the evidence's)
    TRAIN = 20  # coordinator -> contributor: train round r from the model with this digest
    ASSIGN = 21  # coordinator -> aggregator: serve this seat of this group
    UPDATE = 22  # contributor -> coordinator (plaintext rounds): the update, sealed
    DECLINE = 23  # contributor -> coordinator: will not take part in this round
    SHARED = 24  # contributor -> coordinator (buffered jobs): shares sealed; its staleness
    REPORT_NOW = 25  # coordinator -> leaf aggregator seat: training closed, report at once


CODEC: Mapping[Kind, Codec] = MappingProxyType(
    {
        Kind.SHARE: Codec.RING,
        Kind.PARTIAL: Codec.RING,
        Kind.REPORT: Codec.JSON,
        Kind.COMMIT: Codec.JSON,
        Kind.RESEND_SHARE: Codec.JSON,
        Kind.RESEND_PARTIAL: Codec.JSON,
        Kind.REASSIGN: Codec.JSON,
        Kind.EVIDENCE: Codec.LABELLED,
        Kind.AUDIT_REQUEST: Codec.LABELLED,
        Kind.ACCUSE: Codec.JSON,
        Kind.GROUP_SUM: Codec.RING,
        Kind.AUDITED: Codec.LABELLED,
        Kind.INPUT_COPY: Codec.LABELLED,
        Kind.TRAIN: Codec.MSGPACK,
        Kind.ASSIGN: Codec.MSGPACK,
        Kind.UPDATE: Codec.MSGPACK,
        Kind.DECLINE: Codec.MSGPACK,
        Kind.SHARED: Codec.JSON,
        Kind.REPORT_NOW: Codec.LABELLED,
    }
)

#: Kinds that carry a user's update or a sum of updates: sealed for their recipient.
#: Evidence is not: its boxes are ciphertext already, and it seals its keys inside.
SEALED = frozenset({Kind.SHARE, Kind.PARTIAL, Kind.UPDATE, Kind.GROUP_SUM})

#: A node's signed registration (a ``crypto.documents.DocumentKind``).
REGISTRATION_KIND = DocumentKind.REGISTRATION
