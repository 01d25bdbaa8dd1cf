"""Fixtures shared by every suite: one database per test, on SQLite and PostgreSQL.

`db_url` is parametrised over both backends. PostgreSQL comes from a server the
suite starts itself from the installed binaries; without them those tests skip
with a reason, except under CI=true where that is a failure. The run ends with
the line `backends: sqlite=N postgresql=M` (tests run per backend).
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import api.accounts.models
import api.support.models  # noqa: F401  (registers the tables of support)
import engine.models  # noqa: F401  (registers the engine's tables)
from api.webhooks import models as webhook_models  # noqa: F401  (registers its tables)
from engine import Database
from tests.support.postgres import PostgresServer, running_postgres
from tests.support.tools import require

pytest_plugins = ["tests.support.smtp"]

BACKENDS = ("sqlite", "postgresql")
SHARED_PG_DB = "recovery_tests"
_backend_runs: Counter[str] = Counter()


@pytest.fixture(autouse=True, scope="session")
def testclient_host() -> Iterator[None]:
    """Litestar's TestClient sends `Host: testserver.local`, which production does not
    answer: tests allow it the way an operator allows another name
    (RECOVERY_EXTRA_ALLOWED_HOSTS, read when a test builds its `Settings`). Servers run
    as subprocesses never see it (their environment drops the caller's RECOVERY_*)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECOVERY_EXTRA_ALLOWED_HOSTS", "testserver.local")
        yield


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run, with a database holding the current schema."""
    require("postgresql")
    with running_postgres() as server:
        janitor = DatabaseJanitor(
            user=server.user, host="127.0.0.1", port=server.port, dbname=SHARED_PG_DB
        )
        janitor.init()
        engine_ = create_engine(_sync(server.url(SHARED_PG_DB)))
        SQLModel.metadata.create_all(engine_)
        engine_.dispose()
        yield server


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding the current schema, built once and copied per test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine_ = create_engine(f"sqlite:///{path}")
    SQLModel.metadata.create_all(engine_)
    engine_.dispose()
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the database backend this test runs on."""
    request.node.user_properties.append(("backend", request.param))
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a database holding the current schema and no rows.

    SQLite: a copy of a template file. PostgreSQL: one database for the run,
    emptied before each test (a fresh database per test costs ~1 s here; the
    tests run one at a time, and every table is emptied, so none sees
    another's rows).
    """
    if backend == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def pg_url(pg_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The run's PostgreSQL test database, emptied: for tests about PostgreSQL alone."""
    if ("backend", "postgresql") not in request.node.user_properties:
        request.node.user_properties.append(("backend", "postgresql"))
    url = pg_server.url(SHARED_PG_DB)
    _empty_all_tables(url)
    return url


def _sync(url: str) -> str:
    return url.replace("postgresql:", "postgresql+psycopg:", 1)


def _empty_all_tables(url: str) -> None:
    """Delete every row (children first); fail loudly if a leftover connection holds a lock."""
    engine_ = create_engine(_sync(url), poolclass=NullPool)
    try:
        with engine_.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            for table in reversed(SQLModel.metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine_.dispose()


@pytest.fixture
def empty_db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database (no tables): for migration tests."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    dbname = f"e_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(user=server.user, host="127.0.0.1", port=server.port, dbname=dbname)
    janitor.init()
    try:
        yield server.url(dbname)
    finally:
        janitor.drop()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """An engine `Database` on the fresh test database."""
    db = Database(db_url, pool_size=4)
    try:
        yield db
    finally:
        db.close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "backend":
            _backend_runs[value] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(
        "backends: " + " ".join(f"{b}={_backend_runs[b]}" for b in BACKENDS)
    )
