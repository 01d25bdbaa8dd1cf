"""The `recovery` command line, run as a real subprocess against SQLite and PostgreSQL.

Each test runs `python -m api.cli ...` (what the console script runs) with a
clean `RECOVERY_*` environment, in a temporary directory, and checks its exit
status (0 success, 2 bad usage, 1 failure with one line on stderr), its
output, and what it did to the database.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from api import migrate
from api.accounts.addresses import mask_email
from api.accounts.models import Account
from api.cli import build_parser
from api.support.models import SupportKey
from api.support.service import SupportService
from engine import Database, Engine
from flows import registry
from flows.password_recovery import NAME
from tests.support.postgres import free_port
from tests.support.service import command_env, recovery_command, run_recovery
from tests.support.tools import require

REPO = Path(__file__).resolve().parents[2]
STRONG = "Violet-Harbour-73-Lantern!"
account_t = Account.__table__
key_t = SupportKey.__table__


class _FixedClock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    return lines[0]


@pytest.fixture
def migrated_url(empty_db_url: str) -> str:
    """A fresh database brought to head by the migrations, as `recovery migrate` would."""
    migrate.upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    db = Database(migrated_url, pool_size=2)
    try:
        yield Engine(db, registry())
    finally:
        db.close()


def _env(url: str) -> dict[str, str]:
    return {"RECOVERY_DATABASE_URL": url}


# -- migrate ----------------------------------------------------------------------


def test_migrate_builds_the_schema_then_reports_it_current(
    empty_db_url: str, tmp_path: Path
) -> None:
    """`recovery migrate` brings an empty database to head, and a second run changes nothing."""
    first = run_recovery("migrate", env=_env(empty_db_url), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"to revision {migrate.head_revision()}" in first.stdout
    assert migrate.is_current(empty_db_url)

    again = run_recovery("migrate", env=_env(empty_db_url), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already current" in again.stdout


# -- accounts create --------------------------------------------------------------


def _accounts(engine: Engine) -> list[dict[str, object]]:
    with engine.db.transaction(write=False) as conn:
        return [dict(r._mapping) for r in conn.execute(select(account_t))]


def test_accounts_create_reads_the_password_from_stdin_and_refuses_a_duplicate(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """An account is created with an Argon2id hash of the stdin password; a second one with
    the same address in another case is refused with one line, and nothing changes."""
    created = run_recovery(
        "accounts", "create", "--email", "Ada.Lovelace@Example.com", "--name", "Ada Lovelace",
        "--birthdate", "1815-12-10", "--locale", "fr", "--password-stdin",
        env=_env(migrated_url), cwd=tmp_path, input=STRONG + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert STRONG not in created.stdout + created.stderr
    [account] = _accounts(engine)
    assert account["email_normalized"] == "ada.lovelace@example.com"
    assert account["locale"] == "fr"
    assert str(account["birth_date"]) == "1815-12-10"
    assert str(account["password_hash"]).startswith("$argon2id$")
    assert str(account["id"]) in created.stdout

    duplicate = run_recovery(
        "accounts", "create", "--email", "ADA.LOVELACE@example.com", "--name", "Someone",
        "--password-stdin", env=_env(migrated_url), cwd=tmp_path, input=STRONG,
    )  # fmt: skip
    assert duplicate.returncode == 1
    assert "already exists" in _one_line(duplicate.stderr)
    assert _accounts(engine) == [account]


def test_accounts_create_refuses_a_weak_password_listing_every_reason(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """A weak password exits 1 with one line naming each broken rule, and creates nothing."""
    weak = run_recovery(
        "accounts", "create", "--email", "jean@example.com", "--name", "Jean Dupont",
        "--password-stdin", env=_env(migrated_url), cwd=tmp_path, input="jean\n",
    )  # fmt: skip
    assert weak.returncode == 1
    line = _one_line(weak.stderr)
    for code in ("too_short", "missing_digit", "missing_special", "contains_personal_data"):
        assert code in line
    assert "jean\n" not in weak.stdout
    assert _accounts(engine) == []


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [("", "no password"), ("first line\nsecond line\n", "one line")],
)
def test_accounts_create_refuses_an_empty_or_multi_line_stdin(
    tmp_path: Path, stdin: str, reason: str
) -> None:
    """Standard input must hold exactly one line: anything else exits 1 before any database
    is opened."""
    done = run_recovery(
        "accounts", "create", "--email", "x@example.com", "--name", "X", "--password-stdin",
        env={"RECOVERY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}, cwd=tmp_path, input=stdin,
    )  # fmt: skip
    assert done.returncode == 1
    assert reason in _one_line(done.stderr)
    assert list(tmp_path.iterdir()) == []


# -- support-key create -----------------------------------------------------------


def test_support_key_create_prints_the_key_last_and_stores_only_its_digest(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """The key is the last line of stdout, it authenticates with its role, the database holds
    only its digest, and a second key with the same name is refused."""
    done = run_recovery(
        "support-key", "create", "--name", "alice", "--role", "write",
        env=_env(migrated_url), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert SupportService(engine).authenticate_sync(key) == ("alice", "write")
    with engine.db.transaction(write=False) as conn:
        stored = [dict(r._mapping) for r in conn.execute(select(key_t))]
    assert len(stored) == 1
    assert key not in json.dumps(stored, default=str)

    again = run_recovery(
        "support-key", "create", "--name", "alice", "--role", "read",
        env=_env(migrated_url), cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 1
    assert "alice" in _one_line(again.stderr)
    assert again.stdout == ""


def test_support_key_revoke_stops_the_key_at_once_and_frees_its_name_and_list_shows_both(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """`support-key revoke NAME` kills the live key of that name; `create` may then reuse
    the name for a new key; `list` shows both (live first), never a key or a digest; a
    name with no live key is a one-line failure."""
    env = _env(migrated_url)
    first = (
        run_recovery(
            "support-key", "create", "--name", "alice", "--role", "write", env=env, cwd=tmp_path
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    support = SupportService(engine)
    assert support.authenticate_sync(first) == ("alice", "write")

    revoked = run_recovery("support-key", "revoke", "alice", env=env, cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert support.authenticate_sync(first) is None
    again = run_recovery(
        "support-key", "create", "--name", "alice", "--role", "read", env=env, cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip().splitlines()[-1]
    assert support.authenticate_sync(second) == ("alice", "read")
    assert support.authenticate_sync(first) is None

    listed = run_recovery("support-key", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["alice", "read"], ["alice", "write"]]
    assert lines[0].endswith("\tlive") and "\trevoked 20" in lines[1]
    with engine.db.transaction(write=False) as conn:
        digests = [r.key_hash for r in conn.execute(select(key_t))]
    assert not any(secret in listed.stdout for secret in (first, second, *digests))

    missing = run_recovery("support-key", "revoke", "nobody", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "nobody" in _one_line(missing.stderr)
    twice = run_recovery(
        "support-key", "create", "--name", "alice", "--role", "read", env=env, cwd=tmp_path
    )
    assert twice.returncode == 1 and "alice" in _one_line(twice.stderr)


# -- attempts show ------------------------------------------------------------------


def test_attempts_show_prints_state_timeline_and_allowed_events(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Text and JSON both give the state, every event in order and what may happen next,
    with the address masked."""
    attempt = engine.start_sync(
        NAME, subject="marie.curie@example.com", actor="person", data={"client_ip": "10.0.0.7"}
    )
    show = run_recovery("attempts", "show", str(attempt.id), env=_env(migrated_url), cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert "state      requested" in show.stdout
    assert "allowed    dispatch, bounce, expire, cancel" in show.stdout
    assert mask_email("marie.curie@example.com") in show.stdout
    assert "marie.curie" not in show.stdout
    assert "10.0.0.7" in show.stdout

    engine.fire_sync(attempt.id, "cancel", actor="support:alice", detail={"reason": "asked"})
    as_json = run_recovery(
        "attempts", "show", str(attempt.id).upper(), "--json",
        env=_env(migrated_url), cwd=tmp_path,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    view = json.loads(as_json.stdout)
    assert view["state"] == "cancelled"
    assert view["allowed_events"] == []
    assert [(e["seq"], e["event"], e["from"], e["to"], e["actor"]) for e in view["timeline"]] == [
        (1, "start", None, "requested", "person"),
        (2, "cancel", "requested", "cancelled", "support:alice"),
    ]
    assert view["timeline"][1]["detail"] == {"reason": "asked"}


def test_attempts_show_refuses_a_malformed_or_unknown_id_with_one_line(
    migrated_url: str, tmp_path: Path
) -> None:
    """A malformed id and an id no attempt has each exit 1 with a one-line reason."""
    malformed = run_recovery("attempts", "show", "not-an-id", env=_env(migrated_url), cwd=tmp_path)
    assert malformed.returncode == 1
    assert "malformed attempt id" in _one_line(malformed.stderr)

    unknown = uuid.uuid4()
    missing = run_recovery("attempts", "show", str(unknown), env=_env(migrated_url), cwd=tmp_path)
    assert missing.returncode == 1
    assert f"attempt {unknown} not found" in _one_line(missing.stderr)


# -- sweep --------------------------------------------------------------------------


def test_sweep_expires_overdue_attempts_and_says_how_many(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Attempts past their deadline are expired by one sweep, which prints the count; fresh
    ones are left alone, and a second sweep finds nothing."""
    past = Engine(engine.db, registry(), clock=_FixedClock(datetime.now(UTC) - timedelta(days=2)))
    old = [past.start_sync(NAME, subject=f"old{i}@example.com") for i in range(2)]
    fresh = engine.start_sync(NAME, subject="fresh@example.com")

    swept = run_recovery("sweep", env=_env(migrated_url), cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.strip() == "swept 2 overdue attempts"
    assert [engine.read_sync(a.id).state for a in old] == ["expired", "expired"]
    assert engine.read_sync(fresh.id).state == "requested"

    again = run_recovery("sweep", env=_env(migrated_url), cwd=tmp_path)
    assert again.stdout.strip() == "swept 0 overdue attempts"


# -- worker -------------------------------------------------------------------------


def test_worker_emails_a_requested_attempt_then_stops_cleanly_on_sigterm(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    """`recovery worker` dispatches a waiting attempt to the file transport, and SIGTERM
    ends it with status 0."""
    with engine.db.transaction() as conn:
        now = datetime.now(UTC)
        conn.execute(
            insert(account_t).values(
                id=uuid.uuid4(), email="grace@example.com", email_normalized="grace@example.com",
                name="Grace", locale="en", password_hash="$argon2id$unused",
                password_history=[], disabled=False, created_at=now, password_changed_at=now,
            )
        )  # fmt: skip
    attempt = engine.start_sync(NAME, subject="grace@example.com", data={"delivery": {}})
    mailbox = tmp_path / "mail"
    env = {**_env(migrated_url), "RECOVERY_MAIL_URL": f"file://{mailbox}"}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            recovery_command("worker"), env=command_env(env), cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while engine.read_sync(attempt.id).state != "emailed":
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker did not email the attempt"
            time.sleep(0.05)
        assert len(list(mailbox.glob("*.eml"))) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(30)
    assert status == 0, (tmp_path / "worker.log").read_text()


# -- diagrams -----------------------------------------------------------------------


def test_diagrams_reproduce_the_committed_files(tmp_path: Path) -> None:
    """`recovery diagrams --out DIR` writes exactly the committed Mermaid and DOT files."""
    out = tmp_path / "out"
    done = run_recovery("diagrams", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    committed = sorted((REPO / "diagrams").glob("*.mmd")) + sorted(
        (REPO / "diagrams").glob("*.dot")
    )
    assert committed, "diagrams/ holds no committed .mmd or .dot file"
    written = {p.name for p in out.iterdir()}
    for path in committed:
        assert path.name in written
        assert (out / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs"
    assert {p.name for p in out.glob("*.mmd")} == {p.name for p in committed if p.suffix == ".mmd"}


def test_diagrams_write_an_svg_of_each_flow_with_graphviz(tmp_path: Path) -> None:
    """With Graphviz installed, `recovery diagrams` also writes each flow as SVG."""
    require("graphviz")
    out = tmp_path / "out"
    done = run_recovery("diagrams", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for mermaid in out.glob("*.mmd"):
        svg = mermaid.with_suffix(".svg").read_bytes()
        assert svg.lstrip().startswith(b"<") and b"<svg" in svg


# -- usage and configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["serve", "--port", "eighty"],
        ["serve", "--port", "70000"],
        ["accounts", "create", "--email", "a@example.com", "--name", "A"],
        ["accounts", "create", "--email", "a@example.com", "--name", "A", "--password-stdin",
         "--birthdate", "14/03/1985"],
        ["accounts", "create", "--email", "a@example.com", "--name", "A", "--password-stdin",
         "--locale", "de"],
        ["support-key", "create", "--name", "bob", "--role", "owner"],
        ["attempts", "show"],
    ],
)  # fmt: skip
def test_bad_usage_exits_2_with_a_usage_message(argv: list[str], tmp_path: Path) -> None:
    """Malformed command lines exit 2 and say what is wrong, before touching anything."""
    done = run_recovery(*argv, cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: recovery" in done.stderr
    assert "error:" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_command_of_the_spec_is_accepted_by_the_parser() -> None:
    """The forms SPEC §7 fixes parse as written."""
    parser = build_parser()
    for argv in (
        ["serve", "--host", "127.0.0.1", "--port", "8000"],
        ["worker"],
        ["migrate"],
        ["sweep"],
        ["diagrams", "--out", "diagrams"],
        ["accounts", "create", "--email", "e@example.com", "--name", "N",
         "--birthdate", "1985-03-14", "--locale", "fr", "--password-stdin"],
        ["support-key", "create", "--name", "N", "--role", "read"],
        ["attempts", "show", "ID"],
        ["demo", "--base-url", "http://127.0.0.1:8000", "--mailbox", "var/mail"],
    ):  # fmt: skip
        assert callable(parser.parse_args(argv).handler)


@pytest.mark.parametrize(
    ("variable", "value", "argv"),
    [
        ("RECOVERY_LINK_TTL_MINUTES", "abc", ["sweep"]),
        ("RECOVERY_DATABASE_URL", "foo://", ["migrate"]),
        ("RECOVERY_PASSWORD_POLICY", "lenient", ["attempts", "show", str(uuid.uuid4())]),
        ("RECOVERY_MAIL_URL", "carrier-pigeon://loft", ["serve", "--port", "1"]),
        ("RECOVERY_PUBLIC_BASE_URL", "example.com", ["demo"]),
        ("RECOVERY_TRUSTED_PROXIES", "10.0.0.1,not-an-address", ["worker"]),
    ],
)
def test_bad_configuration_exits_1_naming_the_variable(
    variable: str, value: str, argv: list[str], tmp_path: Path
) -> None:
    """A bad `RECOVERY_*` value stops the command with one line that names the variable,
    before anything is created."""
    done = run_recovery(*argv, env={variable: value}, cwd=tmp_path)
    assert done.returncode == 1
    assert variable in _one_line(done.stderr)
    assert list(tmp_path.iterdir()) == []


def test_database_commands_on_an_unmigrated_database_fail_with_one_line(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Without the schema, `sweep` exits 1 with a one-line database reason, not a traceback."""
    done = run_recovery("sweep", env=_env(empty_db_url), cwd=tmp_path)
    assert done.returncode == 1
    assert "database error" in _one_line(done.stderr)


def test_demo_without_a_server_exits_1_saying_it_cannot_reach_it(tmp_path: Path) -> None:
    """`recovery demo` against a port nobody listens on exits 1 with one line, creating nothing."""
    base = f"http://127.0.0.1:{free_port()}"
    env = {"RECOVERY_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    done = run_recovery("demo", "--base-url", base, "--mailbox", str(tmp_path / "mail"), env=env,
                        cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert f"cannot reach the server at {base}" in _one_line(done.stderr)
    assert not (tmp_path / "demo.db").exists()


def test_diagrams_into_a_path_that_cannot_be_a_directory_fail_with_one_line(
    tmp_path: Path,
) -> None:
    """`--out` below a plain file exits 1 with the system's reason and the path."""
    (tmp_path / "plain").write_text("")
    done = run_recovery("diagrams", "--out", "plain/out", cwd=tmp_path)
    assert done.returncode == 1
    assert "plain/out" in _one_line(done.stderr)
