"""The node's training sandbox: the AI provider's job runs isolated, limited, declared.

A job arrives as a declarative ``ModelSpec`` and ``Recipe`` plus float32
weights, never code or pickle. ``NodeCatalogue.check`` decides whether this
node agrees to run it; ``Sandbox.train`` runs it in a child process with no
network, bounded memory and CPU time, and only the job's inputs.
"""

from tessera.sandbox.catalogue import DEFAULT_CATALOGUE, NodeCatalogue
from tessera.sandbox.errors import FrameError, SandboxError, SandboxRefused, size_text
from tessera.sandbox.runner import Sandbox, SandboxLimits, TrainOutcome

__all__ = [
    "DEFAULT_CATALOGUE",
    "FrameError",
    "NodeCatalogue",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxRefused",
    "TrainOutcome",
    "size_text",
]
