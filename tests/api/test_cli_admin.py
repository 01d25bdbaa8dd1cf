"""The command line for the applications' operators, run as real subprocesses on SQLite and
PostgreSQL: admin keys, `recovery accounts import FILE` (a summary, every bad row, a
progress bar on a terminal) and `recovery webhooks add URL --events ...`."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from api import migrate
from api.accounts.models import Account
from api.webhooks.models import WebhookEndpoint
from engine import Database
from tests.support.service import command_env, recovery_command, run_recovery

account_t = Account.__table__
endpoint_t = WebhookEndpoint.__table__
PTY_TIMEOUT_S = 120


@pytest.fixture
def migrated_url(empty_db_url: str) -> str:
    migrate.upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def database(migrated_url: str) -> Iterator[Database]:
    db = Database(migrated_url, pool_size=2)
    try:
        yield db
    finally:
        db.close()


def _env(url: str, **more: str) -> dict[str, str]:
    return {"RECOVERY_DATABASE_URL": url, **more}


def _count(db: Database, table: object) -> int:
    with db.transaction(write=False) as conn:
        return int(conn.execute(sql_select(func.count()).select_from(table)).scalar_one())


def _rows(n: int) -> list[dict[str, str]]:
    digest = bcrypt.hashpw(b"Old-System-Password-1", bcrypt.gensalt(4)).decode()
    return [
        {"email": f"cli{i}@example.com", "name": f"Cli {i}", "password_hash": digest}
        for i in range(n)
    ]


def test_an_admin_key_is_created_like_a_support_key(migrated_url: str) -> None:
    made = run_recovery(
        "support-key", "create", "--name", "app", "--role", "admin", env=_env(migrated_url)
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().splitlines()[-1].startswith("rsk_")
    listed = run_recovery("support-key", "list", env=_env(migrated_url))
    assert "app\tadmin\t" in listed.stdout


@pytest.mark.parametrize("form", ["json", "list", "ndjson"])
def test_accounts_import_reads_json_or_ndjson_and_prints_a_summary(
    migrated_url: str, database: Database, tmp_path: Path, form: str
) -> None:
    rows = _rows(30)
    rows[0] = {
        "email": "plain@example.com",
        "name": "Plain",
        "password": "Violet-Harbour-73-Lantern!",
    }
    path = tmp_path / f"accounts.{form}"
    if form == "json":
        path.write_text(json.dumps({"accounts": rows}))
    elif form == "list":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    done = run_recovery("accounts", "import", str(path), env=_env(migrated_url))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no terminal: no progress bar
    assert done.stdout.strip() == (f"imported {path}: created 30 accounts (29 bcrypt, 1 plain)")
    assert _count(database, account_t) == 30


def test_accounts_import_with_a_bad_row_lists_every_bad_row_and_creates_nothing(
    migrated_url: str, database: Database, tmp_path: Path
) -> None:
    rows = _rows(5)
    rows[1]["email"] = "nope"
    rows[3] = {"email": "weak@example.com", "name": "W", "password": "weak"}
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(rows))
    done = run_recovery("accounts", "import", str(path), env=_env(migrated_url))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "recovery: no account was created: 2 rows are not valid; nothing was imported"
    ]
    lines = done.stdout.splitlines()
    assert (
        lines[0] == "row 2: invalid_email: email must be one address of the form name@example.com"
    )
    assert lines[1].startswith("row 4: password_policy: the password breaks the policy: too_short")
    assert len(lines) == 2
    assert _count(database, account_t) == 0
    missing = run_recovery(
        "accounts", "import", str(tmp_path / "none.json"), env=_env(migrated_url)
    )
    assert missing.returncode == 1 and "No such file" in missing.stderr


def test_accounts_import_shows_a_progress_bar_on_a_terminal(
    migrated_url: str, database: Database, tmp_path: Path
) -> None:
    """Run on a pseudo-terminal (as a person at a shell would): each stage's bar reaches
    its total, then the summary."""
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(_rows(1200)))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        recovery_command("accounts", "import", str(path)),
        env={**command_env(_env(migrated_url)), "TERM": "xterm", "COLUMNS": "100"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + PTY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    assert process.wait(10) == 0
    text = output.decode("utf-8", "replace")
    assert "checking rows" in text and "1200/1200" in text and "inserting" in text
    assert "━" in text  # the bar itself
    assert "created 1200 accounts (1200 bcrypt)" in text
    assert _count(database, account_t) == 1200


def test_webhooks_add_prints_the_secret_once_as_the_last_line(
    migrated_url: str, database: Database
) -> None:
    done = run_recovery(
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--events",
        "password.changed,sessions.revoked",
        "recovery.completed",
        env=_env(migrated_url, RECOVERY_WEBHOOKS_ALLOW_PRIVATE="true"),
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    with database.transaction(write=False) as conn:
        [row] = conn.execute(sql_select(endpoint_t)).all()
    assert row.events == ["password.changed", "sessions.revoked", "recovery.completed"]
    refused = run_recovery(
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--events",
        "password.changed",
        env=_env(migrated_url),
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "recovery: the URL resolves to a loopback, private or link-local address"
    )
    unknown = run_recovery(
        "webhooks", "add", "https://example.com/h", "--events", "nope", env=_env(migrated_url)
    )
    assert unknown.returncode == 1 and "event types must be among" in unknown.stderr
