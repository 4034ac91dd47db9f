"""Protocol messages <-> signed envelopes, the only thing the mailbox carries.

The machines already seal their secure messages (``Sealed``). Control
messages (train requests, assignments) and plaintext updates are Python
objects in the protocol layer; here they become envelopes: signed by their
sender, and sealed for their recipient when they carry a user's update.
Global weights travel as content-addressed safetensors artefacts, named by
SHA-256 in the train request and hash-checked by the node that fetches them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from tessera.crypto.envelope import ReplayGuard, open_envelope, peek, seal
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.control import (
    decode_aggregate_request,
    decode_decline,
    decode_train_request,
    decode_update,
    encode_aggregate_request,
    encode_decline,
    encode_train_request,
    encode_update,
)
from tessera.protocol.effects import Send
from tessera.protocol.events import MessageReceived
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import ENVELOPE_LIMITS
from tessera.protocol.messages import (
    AggregateRequest,
    Sealed,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)
from tessera.weights import Vector

WEIGHTS_MEDIA_TYPE = "application/vnd.tessera.weights+safetensors"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One envelope for the mailbox, with the header fields the relay indexes."""

    recipient: NodeId
    sender: NodeId
    job_id: str
    round: int
    kind: int
    nonce: bytes
    data: bytes

    def row(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "recipient": self.recipient,
            "sender": self.sender,
            "round": self.round,
            "kind": self.kind,
            "nonce": self.nonce,
            "data": self.data,
        }


def weights_artefact(weights: Vector) -> tuple[bytes, str]:
    """A flat weight vector as safetensors bytes, and their SHA-256."""
    data = st_save({"weights": np.ascontiguousarray(weights, dtype=np.float32)})
    return data, hashlib.sha256(data).hexdigest()


def check_weights_artefact(data: bytes) -> int:
    """The length of the weights vector ``data`` holds; RemoteProtocolError if it holds none."""
    try:
        shape = st_load(data).get("weights", np.zeros((0, 0))).shape
    except Exception as exc:  # safetensors raises its own error types
        raise RemoteProtocolError(f"weights artefact is not safetensors: {exc}") from None
    if len(shape) != 1:
        raise RemoteProtocolError("a weights artefact holds one float32 vector named weights")
    sha = hashlib.sha256(data).hexdigest()
    read_weights_artefact(data, sha, shape[0])
    return int(shape[0])


def read_weights_artefact(data: bytes, sha256: str, length: int) -> Vector:
    """Check the hash, then parse; a mismatch is the server's fault."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RemoteProtocolError("weights artefact does not match its SHA-256")
    try:
        arrays = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise RemoteProtocolError(f"weights artefact is not safetensors: {exc}") from None
    vec = arrays.get("weights")
    if vec is None or vec.dtype != np.float32 or vec.shape != (length,):
        raise RemoteProtocolError(f"weights artefact must hold one float32 vector of {length}")
    if not np.isfinite(vec).all():
        raise RemoteProtocolError("weights artefact holds NaN or infinity")
    return vec


def to_envelope(
    send: Send,
    *,
    sender: NodeId,
    job_id: str,
    keys: NodeKeys,
    directory: Mapping[NodeId, PublicKeys],
    publish_weights: Callable[[Vector], str],
) -> Outgoing:
    """Encode one ``Send`` effect; ``publish_weights`` stores a model and names it."""
    msg = send.message
    if isinstance(msg, Sealed):
        head = peek(msg.data)
        return Outgoing(
            send.recipient, sender, job_id, head.round, head.kind, head.nonce, bytes(msg.data)
        )
    sealed = False
    if isinstance(msg, TrainRequest):
        kind, round, payload = (
            Kind.TRAIN,
            msg.round,
            encode_train_request(msg, publish_weights(msg.weights)),
        )
    elif isinstance(msg, AggregateRequest):
        kind, round, payload = Kind.ASSIGN, msg.round, encode_aggregate_request(msg)
    elif isinstance(msg, UpdateSubmission):
        kind, round, payload, sealed = Kind.UPDATE, msg.round, encode_update(msg), True
    elif isinstance(msg, TrainingDeclined):
        kind, round, payload = Kind.DECLINE, msg.round, encode_decline(msg)
    else:  # pragma: no cover - the Message union is closed
        raise TypeError(f"cannot send {type(msg).__name__}")
    data = seal(
        kind=int(kind),
        job_id=job_id,
        round=round,
        sender=sender,
        recipient=send.recipient,
        payload=payload,
        sender_keys=keys,
        recipient_public=directory[send.recipient] if sealed else None,
    )
    return Outgoing(send.recipient, sender, job_id, round, int(kind), peek(data).nonce, data)


_FROM_COORDINATOR = {int(Kind.TRAIN), int(Kind.ASSIGN)}
_TO_COORDINATOR = {int(Kind.UPDATE), int(Kind.DECLINE)}


def from_envelope(
    data: bytes,
    *,
    me: NodeId,
    job_id: str,
    keys: NodeKeys,
    directory: Mapping[NodeId, PublicKeys],
    replay: ReplayGuard,
    resolve_weights: Callable[[str, int], Vector] | None = None,
) -> MessageReceived:
    """Turn a mailbox envelope into the event the machines take.

    Control messages are opened and checked here (signature, job, recipient,
    replay; train requests and assignments only from the coordinator);
    secure-protocol envelopes go to the machines sealed, which check them.
    Raises ``InvalidEnvelope`` / ``RemoteProtocolError`` with the reason.
    """
    head = peek(data)
    if head.kind not in _FROM_COORDINATOR | _TO_COORDINATOR:
        return MessageReceived(sender=head.sender, message=Sealed(data))
    if head.kind in _FROM_COORDINATOR and head.sender != COORDINATOR:
        raise RemoteProtocolError("only the coordinator sends train requests and assignments")
    if head.kind in _TO_COORDINATOR and me != COORDINATOR:
        raise RemoteProtocolError("updates and declines go to the coordinator")
    env = open_envelope(
        data,
        recipient_keys=keys,
        directory=directory,
        expect_job=job_id,
        expect_round=None,
        expect_recipient=me,
        max_bytes=ENVELOPE_LIMITS[Kind(head.kind)],
        replay=replay,
    )
    if env.kind == Kind.TRAIN:
        if resolve_weights is None:
            raise RemoteProtocolError("this party takes no train requests")
        request = decode_train_request(env.payload, resolve_weights).request
        return MessageReceived(sender=env.sender, message=request)
    if env.kind == Kind.ASSIGN:
        return MessageReceived(sender=env.sender, message=decode_aggregate_request(env.payload))
    if env.kind == Kind.UPDATE:
        if not env.sealed:
            raise RemoteProtocolError("updates must be sealed for the coordinator")
        return MessageReceived(sender=env.sender, message=decode_update(env.payload))
    return MessageReceived(sender=env.sender, message=decode_decline(env.payload))
