"""tune_allocator: glibc malloc thresholds for numpy-heavy processes."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tessera.runtime import allocator
from tessera.runtime.allocator import tune_allocator


def _glibc() -> bool:
    try:
        return str(os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def test_tune_allocator_returns_a_bool_and_is_idempotent() -> None:
    first = tune_allocator()
    assert isinstance(first, bool)
    assert tune_allocator() is first
    assert tune_allocator() is first
    if sys.platform.startswith("linux") and _glibc():
        assert first  # glibc on Linux accepts the settings


def test_numpy_still_works_after_tuning() -> None:
    tune_allocator()
    rng = np.random.default_rng(0)
    for size in (10, 100_000, 1 << 21, 70 << 17):  # on the heap, and past the mmap threshold
        a = rng.random(size)
        b = a * 2.0
        np.testing.assert_array_equal(b / 2.0, a)
        assert float(np.sum(b - a)) == pytest.approx(float(np.sum(a)))
        del a, b


def test_no_glibc_means_no_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator._tune.__wrapped__() is False
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator, "_is_glibc", lambda: False)  # musl, say
    assert allocator._tune.__wrapped__() is False
