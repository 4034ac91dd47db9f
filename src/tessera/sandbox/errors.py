"""The sandbox's two failures: refused by policy, or attempted and failed.

``SandboxRefused`` means the job asks for more than this node agreed to run
(the AI provider's side); nothing was started. ``SandboxError`` means the
sandbox could not run or finish the training: a limit was hit, the child
crashed or timed out, or isolation is unavailable. Both carry a sentence a
node's owner can act on.
"""

from __future__ import annotations

from tessera.errors import TesseraError


class SandboxRefused(TesseraError):
    """The job lies outside this node's catalogue; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SandboxError(TesseraError):
    """Training in the sandbox could not start or finish; the message says why."""


class FrameError(SandboxError):
    """A frame on the sandbox pipe is malformed, oversized or truncated."""


def size_text(size: int) -> str:
    """A memory size as the sandbox's messages give it: ``512 MiB``, ``1.5 GiB``."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.3g} GiB"
    return f"{size / (1 << 20):.4g} MiB"
