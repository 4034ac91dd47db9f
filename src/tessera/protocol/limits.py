"""Every size limit, in one table, each derived from what it must hold.

A party refuses anything larger before parsing it, and the limits agree
along each path: a message one party may send is one the next party on its
way (the coordinator's HTTP body limit, then the recipient's envelope limit)
accepts. Before this table they disagreed: aggregators took envelopes of 512
MiB that the coordinator's mailbox (64 MiB bodies) could never relay, and a
plaintext update of the largest model the node catalogue allows (20 MB of
float32) was over the 16 MiB msgpack limit.
"""

from __future__ import annotations

from tessera.crypto.documents import MAX_DOCUMENT_BYTES

#: The largest model the protocol carries; the node catalogue's default bound.
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

#: The coordinator's HTTP body: envelopes, or documents (smaller).
COORDINATOR_BODY = MAX_ENVELOPE_BYTES
#: The data provider's HTTP body: a records request carries three documents
#: (the job, the consent receipt, the signed request) and the field list.
PROVIDER_BODY = 4 * MAX_DOCUMENT_BYTES

MAX_DOCUMENT = MAX_DOCUMENT_BYTES  # re-exported: documents' own limit lives with their codec
