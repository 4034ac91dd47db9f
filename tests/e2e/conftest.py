"""End-to-end fixtures."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator

import pytest


@pytest.fixture
def one_deployment_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run the tests that start a whole deployment one at a time across pytest-xdist's
    workers: two deployments at once on 2 cores starve each other's nodes and
    coordinator past the rounds' deadlines. A lock file beside the workers' temporary
    folders does it (``xdist_group`` grouping alone did not keep them apart)."""
    shared = tmp_path_factory.getbasetemp().parent  # every worker's folder is in it
    with (shared / "deployments.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
