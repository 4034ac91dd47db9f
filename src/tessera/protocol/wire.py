"""One party's end of the wire: its identity, and the one way it seals and opens.

Every secure message goes through here, so every role signs what it sends,
seals what is secret, and checks job, round, recipient, signature and replay
on what it receives, the same way.

Opening is pure but for the replay guard, so a runtime with spare cores may
open an envelope ahead, elsewhere, with the recipient's keys (``open_checked``:
the same checks, the replay guard aside) and leave the result in the
recipient's ``Openings``: ``Wire.open`` then takes it for exactly these bytes,
this round and this size limit, and still checks and remembers the nonce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tessera.crypto.envelope import (
    Bytes,
    Envelope,
    ReplayGuard,
    open_envelope,
    open_sealed,
    peek,
    seal,
    seal_stream,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope
from tessera.ids import NodeId
from tessera.protocol.effects import Send
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import ENVELOPE_LIMITS
from tessera.protocol.messages import Sealed


class Openings:
    """Envelopes opened ahead for their recipients, until their round is forgotten."""

    __slots__ = ("_by_round",)

    def __init__(self) -> None:
        # header round -> (recipient, envelope bytes) -> (size limit checked, the opening)
        self._by_round: dict[int, dict[tuple[NodeId, bytes], tuple[int, Envelope]]] = {}

    def put(self, recipient: NodeId, data: bytes, max_bytes: int, opened: Envelope) -> None:
        self._by_round.setdefault(opened.round, {})[(recipient, data)] = (max_bytes, opened)

    def take(self, recipient: NodeId, data: bytes, round: int, max_bytes: int) -> Envelope | None:
        """The opening of ``data`` for ``recipient``, if made with these checks; once."""
        held = self._by_round.get(round)
        found = None if held is None else held.pop((recipient, data), None)
        return found[1] if found is not None and found[0] == max_bytes else None

    def forget_through(self, round: int) -> None:
        """Drop what was opened for ``round`` and before (never delivered: lost, or late)."""
        for r in [r for r in self._by_round if r <= round]:
            del self._by_round[r]

    def __len__(self) -> int:
        return sum(len(held) for held in self._by_round.values())


def open_checked(
    data: bytes,
    *,
    node: NodeId,
    job_id: str,
    keys: NodeKeys,
    directory: Mapping[NodeId, PublicKeys],
    round: int,
    max_bytes: int,
    replay: ReplayGuard | None,
) -> Envelope:
    """Check everything and decrypt, as ``node``; any failure is one ``InvalidEnvelope``.

    The kind's own limit applies where it is tighter than ``max_bytes``, so
    a megabyte "report" is refused before its signature is checked. An
    unknown kind keeps ``max_bytes``: the machine refuses it by name.
    """
    if len(data) <= max_bytes:  # else open_envelope says "too large" before parsing
        with contextlib.suppress(InvalidEnvelope):  # open_envelope will say what is wrong
            kind = peek(data).kind
            if kind in ENVELOPE_LIMITS:
                max_bytes = min(max_bytes, ENVELOPE_LIMITS[Kind(kind)])
    return open_envelope(
        data,
        recipient_keys=keys,
        directory=directory,
        expect_job=job_id,
        expect_round=round,
        expect_recipient=node,
        max_bytes=max_bytes,
        replay=replay,
    )


@dataclass
class Wire:
    node: NodeId
    job_id: str
    keys: NodeKeys
    directory: Mapping[NodeId, PublicKeys]
    replay: ReplayGuard = field(default_factory=ReplayGuard)
    opened: Openings | None = None  # envelopes its runtime opened ahead (module docstring)

    def send(
        self, recipient: NodeId, kind: Kind, round: int, payload: bytes, *, sealed: bool
    ) -> Send:
        """Sign ``payload`` (and seal it for ``recipient`` when ``sealed``)."""
        data = seal(
            kind=int(kind),
            job_id=self.job_id,
            round=round,
            sender=self.node,
            recipient=recipient,
            payload=payload,
            sender_keys=self.keys,
            recipient_public=self.directory[recipient] if sealed else None,
        )
        return Send(recipient=recipient, message=Sealed(data))

    def send_stream(
        self, recipient: NodeId, kind: Kind, round: int, size: int, chunks: Iterable[Bytes]
    ) -> Send:
        """Sign and seal a payload of ``size`` bytes that arrives as ``chunks``
        (``envelope.seal_stream``: never held whole)."""
        data = seal_stream(
            kind=int(kind),
            job_id=self.job_id,
            round=round,
            sender=self.node,
            recipient=recipient,
            size=size,
            chunks=chunks,
            sender_keys=self.keys,
            recipient_public=self.directory[recipient],
        )
        return Send(recipient=recipient, message=Sealed(data))

    def open(self, data: bytes, *, round: int, max_bytes: int) -> Envelope:
        """Check everything and decrypt (``open_checked``), or take the opening made
        ahead; any failure is one ``InvalidEnvelope``."""
        ahead = self._ahead(data, round, max_bytes)
        if ahead is not None:
            return ahead
        return open_checked(
            data,
            node=self.node,
            job_id=self.job_id,
            keys=self.keys,
            directory=self.directory,
            round=round,
            max_bytes=max_bytes,
            replay=self.replay,
        )

    def open_input(self, data: bytes, *, round: int, max_bytes: int) -> Envelope:
        """Open a sealed input that will never be evidence: the checks and the AEAD,
        not the signature (``crypto.envelope.open_sealed``: only its sender and we hold
        its key). Whoever forwards or discloses a box must ``open`` it instead.
        An opening made ahead (the full open, signature included) serves too."""
        ahead = self._ahead(data, round, max_bytes)
        if ahead is not None:
            return ahead
        with contextlib.suppress(InvalidEnvelope):
            kind = peek(data).kind
            if kind in ENVELOPE_LIMITS:
                max_bytes = min(max_bytes, ENVELOPE_LIMITS[Kind(kind)])
        return open_sealed(
            data,
            recipient_keys=self.keys,
            directory=self.directory,
            expect_job=self.job_id,
            expect_round=round,
            expect_recipient=self.node,
            max_bytes=max_bytes,
            replay=self.replay,
        )

    def _ahead(self, data: bytes, round: int, max_bytes: int) -> Envelope | None:
        """The opening its runtime made ahead for exactly these bytes and checks, once;
        its nonce checked and remembered here, as an open would."""
        if self.opened is None:
            return None
        ahead = self.opened.take(self.node, data, round, max_bytes)
        if ahead is not None:
            self.replay.check_and_remember(ahead.sender, ahead.round, ahead.nonce)
        return ahead
