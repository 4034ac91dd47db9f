"""One sandbox child for the whole session: each start imports torch, which takes seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tessera.sandbox import Sandbox, SandboxLimits


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxLimits(call_timeout=60), isolate_network="best_effort") as box:
        yield box
