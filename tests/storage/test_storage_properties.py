"""Hypothesis: the mailbox and the event log against a plain in-memory model.

Each example works under fresh names (a random prefix) in the test's store,
so examples share one database without seeing each other's rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.storage import EventRecord, Replayed, Store, StoreError

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# (recipient, sender, nonce, size), drawn from small sets so replays and shared inboxes happen.
posts = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 5), st.integers(0, 300)),
    max_size=25,
)


@SETTINGS
@given(posts=posts, limit=st.integers(1, 6), max_bytes=st.integers(1, 700))
def test_mailbox_matches_model(
    store: Store, posts: list[tuple[int, int, int, int]], limit: int, max_bytes: int
) -> None:
    ns = uuid.uuid4().hex
    model: dict[int, list[tuple[int, bytes]]] = {}
    used: set[tuple[int, int]] = set()
    last_id = store.last_message_id()
    for recipient, sender, nonce, size in posts:
        data = bytes([nonce]) * size
        kwargs: dict[str, Any] = {
            "job_id": ns,
            "recipient": f"{ns}-r{recipient}",
            "sender": f"{ns}-s{sender}",
            "round": 0,
            "kind": 0,
            "nonce": bytes([nonce]),
            "data": data,
        }
        if (sender, nonce) in used:
            with pytest.raises(Replayed):
                store.post_message(**kwargs)
            continue
        mail_id = store.post_message(**kwargs)
        assert mail_id > last_id
        last_id = mail_id
        used.add((sender, nonce))
        model.setdefault(recipient, []).append((mail_id, data))
    assert store.last_message_id() == last_id

    for recipient in range(3):
        got: list[tuple[int, bytes]] = []
        after = 0
        while page := store.messages_for(
            f"{ns}-r{recipient}", after, limit=limit, max_bytes=max_bytes
        ):
            assert len(page) <= limit
            assert len(page) == 1 or sum(len(i.data) for i in page) <= max_bytes
            got.extend((i.id, i.data) for i in page)
            after = page[-1].id
        assert got == model.get(recipient, [])


# A step: (seq, nonces of its outgoing messages).
steps = st.lists(st.tuples(st.integers(0, 6), st.lists(st.integers(0, 8), max_size=3)), max_size=12)


@SETTINGS
@given(steps=steps)
def test_commit_steps_are_all_or_nothing(store: Store, steps: list[tuple[int, list[int]]]) -> None:
    job = uuid.uuid4().hex
    store.add_job(job, "d", {}, 1)
    logged: list[int] = []
    nonces: set[int] = set()
    mail: list[tuple[int, int]] = []  # (seq, nonce) in id order
    for seq, outgoing in steps:
        ok = (
            seq not in logged and len(set(outgoing)) == len(outgoing) and not nonces & set(outgoing)
        )
        messages = [
            {
                "job_id": job,
                "recipient": job,
                "sender": job,
                "round": seq,
                "kind": n,
                "nonce": bytes([n]),
                "data": b"",
            }
            for n in outgoing
        ]
        if not ok:
            with pytest.raises(StoreError):
                store.commit_step(EventRecord(job, seq, "x", 0.0), outgoing=messages)
            continue
        ids = store.commit_step(EventRecord(job, seq, "x", 0.0), outgoing=messages)
        assert len(ids) == len(outgoing) and ids == sorted(ids)
        logged.append(seq)
        nonces |= set(outgoing)
        mail.extend((seq, n) for n in outgoing)
    assert [e.seq for e in store.events(job)] == sorted(logged)
    assert [(i.round, i.kind) for i in store.messages_for(job, 0, limit=1000)] == mail
