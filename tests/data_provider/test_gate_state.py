"""The gate's durable state on SQLite and PostgreSQL: kept across restarts, atomic, pruned."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Table, func, inspect, select

from tessera.consent import GateState, MemoryGateState
from tessera.data_provider.gate_state import SqlGateState, nonce_table, revocation_table
from tessera.storage import StoreError

T0 = 1_780_000_000.0
SIGNER = "a" * 64
OTHER = "b" * 64
RECEIPT = "c" * 64
NONCE = "0123456789abcdef" * 2


def rows(state: SqlGateState, table: Table) -> int:
    with state._engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_the_tables_are_made_when_first_opened(store_url: str) -> None:
    with SqlGateState(store_url) as state:
        names = set(inspect(state._engine).get_table_names())
        assert {"gate_revocation", "gate_nonce"} <= names
        assert rows(state, nonce_table) == rows(state, revocation_table) == 0
    with SqlGateState(store_url) as again:  # opening an existing database changes nothing
        assert again.revoked_at(RECEIPT) is None


def test_a_revocation_survives_a_new_state_on_the_same_url(store_url: str) -> None:
    with SqlGateState(store_url) as state:
        state.revoke(RECEIPT, T0 + 10, expires=T0 + 3600, now=T0)
        state.revoke(RECEIPT, T0 + 20, expires=T0 + 3600, now=T0)  # a later one changes nothing
        assert state.revoked_at(RECEIPT) == T0 + 10
    with SqlGateState(store_url) as restarted:
        assert restarted.revoked_at(RECEIPT) == T0 + 10
        assert restarted.revoked_at("d" * 64) is None
        restarted.revoke(RECEIPT, T0 + 5, expires=T0 + 3600, now=T0)  # an earlier one wins
    with SqlGateState(store_url) as restarted:
        assert restarted.revoked_at(RECEIPT) == T0 + 5


def test_revocations_are_pruned_once_the_receipt_expires(store_url: str) -> None:
    with SqlGateState(store_url) as state:
        state.revoke(RECEIPT, T0, expires=T0 + 10, now=T0)
        state.revoke("d" * 64, T0, expires=T0 + 5, now=T0 + 5)  # expired already: not kept
        assert rows(state, revocation_table) == 1
        state.revoke("e" * 64, T0, expires=T0 + 3600, now=T0 + 10)
        assert state.revoked_at(RECEIPT) is None
        assert state.revoked_at("e" * 64) == T0
        assert rows(state, revocation_table) == 1


def test_a_used_nonce_is_refused_after_a_restart(store_url: str) -> None:
    with SqlGateState(store_url) as state:
        assert not state.nonce_used(SIGNER, NONCE, now=T0)
        assert state.use_nonce(SIGNER, NONCE, expires=T0 + 300, now=T0)
        assert not state.use_nonce(SIGNER, NONCE, expires=T0 + 300, now=T0 + 1)
    with SqlGateState(store_url) as restarted:
        assert restarted.nonce_used(SIGNER, NONCE, now=T0 + 300)  # still in its window
        assert not restarted.use_nonce(SIGNER, NONCE, expires=T0 + 400, now=T0 + 300)
        assert not restarted.nonce_used(OTHER, NONCE, now=T0 + 1)  # nonces are per signer
        assert restarted.use_nonce(OTHER, NONCE, expires=T0 + 300, now=T0 + 1)


def test_an_expired_nonce_is_pruned(store_url: str) -> None:
    with SqlGateState(store_url) as state:
        assert state.use_nonce(SIGNER, NONCE, expires=T0 + 300, now=T0)
        assert state.use_nonce(SIGNER, "f" * 32, expires=T0 + 900, now=T0)
        assert not state.nonce_used(SIGNER, NONCE, now=T0 + 301)  # past its window
        assert state.use_nonce(OTHER, NONCE, expires=T0 + 601, now=T0 + 301)  # prunes it
        assert rows(state, nonce_table) == 2
        # a row not yet pruned is taken over once its window has passed
        assert state.use_nonce(OTHER, NONCE, expires=T0 + 1000, now=T0 + 700)
        assert not state.use_nonce(OTHER, NONCE, expires=T0 + 1000, now=T0 + 701)
        assert state.nonce_used(SIGNER, "f" * 32, now=T0 + 700)


def race(states: list[GateState], nonce: str) -> list[bool]:
    """Each state's ``use_nonce`` of ``nonce``, from its own thread, all at once."""
    start = threading.Barrier(len(states))
    won: list[bool] = []

    def use(state: GateState) -> None:
        start.wait(timeout=30)
        won.append(state.use_nonce(SIGNER, nonce, expires=T0 + 300, now=T0))

    threads = [threading.Thread(target=use, args=(state,)) for state in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return won


@pytest.mark.parametrize("instances", [1, 2], ids=["one-state", "two-states"])
def test_a_nonce_used_concurrently_lets_exactly_one_through(store_url: str, instances: int) -> None:
    """Two threads (on one state, or on two: two provider processes) race, 20 times."""
    opened = [SqlGateState(store_url) for _ in range(instances)]
    try:
        for attempt in range(20):
            won = race([opened[0], opened[-1]], f"{attempt:032x}")
            assert sorted(won) == [False, True], attempt
    finally:
        for state in opened:
            state.close()


def test_the_memory_state_races_the_same_way() -> None:
    state = MemoryGateState()
    assert sorted(race([state] * 8, NONCE)) == [False] * 7 + [True]


@pytest.mark.parametrize("make", [MemoryGateState, lambda: SqlGateState("sqlite://")])
def test_both_kinds_answer_alike(make: Callable[[], GateState]) -> None:
    state = make()
    assert state.use_nonce(SIGNER, NONCE, expires=T0 + 300, now=T0)
    assert state.nonce_used(SIGNER, NONCE, now=T0 + 300)
    assert not state.nonce_used(SIGNER, NONCE, now=T0 + 300.5)
    state.revoke(RECEIPT, T0 + 7, expires=T0 + 10, now=T0)
    assert state.revoked_at(RECEIPT) == T0 + 7
    state.revoke(RECEIPT, T0 + 8, expires=T0 + 10, now=T0 + 10)  # expired: forgotten
    assert state.revoked_at(RECEIPT) is None


def test_a_sqlite_file_is_made_with_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "provider.db"
    with SqlGateState(f"sqlite:///{path}") as state:
        state.revoke(RECEIPT, T0, expires=T0 + 10, now=T0)
    assert path.is_file()


@pytest.mark.parametrize("url", ["mysql://nobody@127.0.0.1/x", "not a url"])
def test_a_bad_url_is_a_store_error(url: str) -> None:
    with pytest.raises(StoreError, match="cannot open the gate's database"):
        SqlGateState(url)


def test_a_closed_state_refuses_calls(tmp_path: Path) -> None:
    state = SqlGateState(f"sqlite:///{tmp_path / 'gate.db'}")
    state.close()
    with pytest.raises(StoreError, match="closed"):
        state.nonce_used(SIGNER, NONCE, now=T0)
