"""Snapshots of a coordinator's state, committed with the event they follow."""

from __future__ import annotations

import pytest

from tessera.storage import Conflict, EventRecord, Store
from tessera.storage.store import SNAPSHOTS_KEPT


def step(store: Store, seq: int, snapshot: bytes | None = None) -> None:
    store.commit_step(EventRecord("job-1", seq, "timer", float(seq), timer="t"), snapshot=snapshot)


def test_the_newest_snapshot_and_the_events_after_it(store: Store) -> None:
    store.add_job("job-1", "d", {}, 1)
    assert store.latest_snapshot("job-1") is None
    for seq in range(6):
        step(store, seq, snapshot=f"state after {seq}".encode() if seq in (1, 3) else None)
    assert store.latest_snapshot("job-1") == (3, b"state after 3")
    assert [e.seq for e in store.events("job-1", after=3)] == [4, 5]
    assert [e.seq for e in store.events("job-1")] == list(range(6))
    assert store.latest_snapshot("job-2") is None


def test_only_the_newest_snapshots_are_kept(store: Store) -> None:
    store.add_job("job-1", "d", {}, 1)
    for seq in range(5):
        step(store, seq, snapshot=bytes([seq]) * 1000)
    with store._read() as conn:
        from tessera.storage import models as m

        kept = sorted(r.seq for r in conn.execute(m.snapshot.select()).all())
    assert kept == list(range(5))[-SNAPSHOTS_KEPT:]


def test_a_snapshot_is_written_only_with_its_event(store: Store) -> None:
    """A step that fails (its event is logged already) leaves no snapshot behind."""
    store.add_job("job-1", "d", {}, 1)
    step(store, 0, snapshot=b"first")
    with pytest.raises(Conflict):
        step(store, 0, snapshot=b"second")
    assert store.latest_snapshot("job-1") == (0, b"first")
