"""The storage tests' store, on each backend of ``store_url`` (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tessera.storage import Store


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as s:
        yield s
