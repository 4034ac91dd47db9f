"""One envelope arriving on ``POST /v1/mail``, checked and kept as it streams in.

Theory of operation: an envelope's header (at most ``MAX_HEADER_BYTES``)
comes first and says the kind, job, sender and the exact size of the whole.
So before the rest is read the relay refuses a size over the kind's own
limit or the job's bound for it (``CoordinatorService.check_kind_size``,
``check_job_size``: from the job's public document, nothing about its state
is told to a header not yet authenticated). The rest passes through a
``SignatureStream`` (the signature covers SHA-256 of the body) into memory
when small, or into a file of the blob folder (``storage.blobs``) when over
``INLINE_BYTES``: a large envelope is never held whole. At the end the
signature is checked against the registered sender and the envelope goes
through the same checks and store as a small one (``store_mail``); a refused
file is removed.

A refusal does not stop the reading: the rest of the body (within the route's
``MAIL_BODY``, which ``BodyLimit`` enforces) is read and dropped, then the
refusal is answered, so the sender reads a clear 4xx instead of a reset.
"""

from __future__ import annotations

from tessera.coordinator.service import CoordinatorService, Refused
from tessera.crypto.envelope import (
    MAX_HEADER_BYTES,
    EnvelopeHeader,
    SignatureStream,
    read_header,
)
from tessera.errors import InvalidEnvelope
from tessera.protocol.limits import MAX_ENVELOPE_BYTES
from tessera.storage.blobs import BlobWriter

#: An envelope up to this size stays in memory and in its database row.
INLINE_BYTES = 1 << 20


class MailIntake:
    """Feed the body's chunks in order, then ``finish`` (or ``discard`` on a disconnect)."""

    def __init__(self, service: CoordinatorService) -> None:
        self.service = service
        self.head: EnvelopeHeader | None = None
        self.size = 0  # the whole envelope's, as its header says
        self.received = 0
        self.refused: Refused | None = None
        self._prefix = bytearray()
        self._signature = SignatureStream()
        self._buffer: bytearray | None = None
        self._writer: BlobWriter | None = None

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the body; after a refusal they are only counted."""
        self.received += len(chunk)
        if self.refused is not None:
            return
        try:
            self._take(chunk)
        except Refused as exc:
            self.refused = exc
            self.discard()

    def _take(self, chunk: bytes) -> None:
        if self.head is None:
            self._prefix += chunk
            try:
                self.head, self.size = read_header(self._prefix)
            except InvalidEnvelope as exc:
                if exc.reason == "truncated" and len(self._prefix) < MAX_HEADER_BYTES:
                    return  # the header is still coming
                raise Refused(400, str(exc)) from None
            if self.size > MAX_ENVELOPE_BYTES:
                raise Refused(413, f"an envelope is at most {MAX_ENVELOPE_BYTES} bytes")
            self.service.check_kind_size(self.head, self.size)
            self.service.check_job_size(self.head, self.size)
            chunk, self._prefix = bytes(self._prefix), bytearray()
            blobs = self.service.store.blobs
            if self.size > INLINE_BYTES and blobs is not None:
                self._writer = blobs.writer()
            else:
                self._buffer = bytearray()
        if self.received > self.size:
            raise Refused(400, str(InvalidEnvelope("trailing bytes")))
        self._signature.update(chunk)
        if self._writer is not None:
            self._writer.write(chunk)
        else:
            assert self._buffer is not None
            self._buffer += chunk

    def finish(self) -> int:
        """The stored envelope's mail id, or the refusal (``Refused``) saying why not."""
        if self.refused is not None:
            raise self.refused
        head = self.head
        if head is None or self.received < self.size:
            self.discard()
            raise Refused(400, str(InvalidEnvelope("truncated")))
        sender = self.service.public_keys(head.sender)
        try:
            if sender is None:
                raise InvalidEnvelope("unknown sender")
            self._signature.verify(sender)
        except InvalidEnvelope as exc:
            self.discard()
            raise Refused(400 if "signature" not in exc.reason else 403, str(exc)) from None
        if self._writer is None:
            assert self._buffer is not None
            return self.service.store_mail(head, self.size, data=bytes(self._buffer))
        name, new = self._writer.commit()
        self._writer = None
        try:
            return self.service.store_mail(head, self.size, blob=(name, self.size))
        except BaseException:
            blobs = self.service.store.blobs
            if new and blobs is not None:  # not stored: no row will ever name it
                blobs.remove([name])
            raise

    def discard(self) -> None:
        """Drop what was kept (a refusal, or the sender gone mid-body)."""
        if self._writer is not None:
            self._writer.discard()
            self._writer = None
        self._buffer = None
