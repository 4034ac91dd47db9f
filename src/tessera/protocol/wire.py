"""One party's end of the wire: its identity, and the one way it seals and opens.

Every secure message goes through here, so every role signs what it sends,
seals what is secret, and checks job, round, recipient, signature and replay
on what it receives, the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera.crypto.envelope import Envelope, ReplayGuard, open_envelope, open_sealed, peek, seal
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope
from tessera.ids import NodeId
from tessera.protocol.effects import Send
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import ENVELOPE_LIMITS
from tessera.protocol.messages import Sealed


@dataclass
class Wire:
    node: NodeId
    job_id: str
    keys: NodeKeys
    directory: Mapping[NodeId, PublicKeys]
    replay: ReplayGuard = field(default_factory=ReplayGuard)

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

    def open(self, data: bytes, *, round: int, max_bytes: int) -> Envelope:
        """Check everything and decrypt; any failure is one ``InvalidEnvelope``.

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
            recipient_keys=self.keys,
            directory=self.directory,
            expect_job=self.job_id,
            expect_round=round,
            expect_recipient=self.node,
            max_bytes=max_bytes,
            replay=self.replay,
        )

    def open_input(self, data: bytes, *, round: int, max_bytes: int) -> Envelope:
        """Open a sealed input that will never be evidence: the checks and the AEAD,
        not the signature (``crypto.envelope.open_sealed``: only its sender and we hold
        its key). Whoever forwards or discloses a box must ``open`` it instead."""
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
