"""Shared fixtures: database backends (a fresh SQLite file, or a fresh PostgreSQL schema).

PostgreSQL: one throw-away database per test session (``tessera_test_<random>``,
dropped at the end) on the server at ``TESSERA_TEST_POSTGRES_URL`` (default
the local one), and one fresh schema per test inside it. When no server
answers, the PostgreSQL cases skip, except under ``CI=true``, where they fail.

``private_postgres``: a server of the test's own (``tessera.testing.postgres``), for
tests that stop or crash it; it skips the same way where PostgreSQL is not installed.
``small_disk`` (tests/full_disk.py): a small tmpfs a test fills up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tessera.testing.postgres import PostgresCluster, PostgresUnavailable

pytest_plugins = ["tests.full_disk"]  # the small_disk fixture

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a database created for this session and dropped afterwards."""
    server = make_url(os.environ.get("TESSERA_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    admin = create_engine(server, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"tessera_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = f"no PostgreSQL server at {server.render_as_string()}: {exc.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs PostgreSQL: {reason}")
        pytest.skip(reason)
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty store; reopening the same URL reaches the same data."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    yield request.getfixturevalue("postgres_store_url")


@pytest.fixture
def postgres_store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema in this session's PostgreSQL database, dropped afterwards."""
    database = make_url(request.getfixturevalue("postgres_database"))
    schema = f"s_{uuid.uuid4().hex[:12]}"
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = database.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def private_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test's own, started, which it may stop and restart."""
    try:
        cluster = PostgresCluster.create()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true needs PostgreSQL's initdb and pg_ctl: {exc}")
        pytest.skip(str(exc))
    with cluster:
        yield cluster
