"""`recovery serve` as a real subprocess: the whole journey over HTTP, and `recovery demo`.

The server runs exactly as in production (`python -m api.cli serve`, uvicorn,
the mail dispatcher in-process, migrations applied at start) on a free
loopback port, with SQLite in a temporary directory. Mail goes to a real
SMTP server on loopback (aiosmtpd), or to the file transport for the demo.
Afterwards the server's whole output is searched for every secret the
journey handled.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from sqlalchemy import select

from api.accounts.models import Account
from api.accounts.tokens import token_hash
from engine import Database
from engine.core import attempt_t
from tests.support.service import run_recovery, running_service
from tests.support.smtp import SmtpSink

EMAIL = "Noor.Haddad@Example.org"
OLD_PASSWORD = "Copper-Meadow-58-Quartz!"
NEW_PASSWORD = "Silent-Orchard-94-Beacon?"
JOURNEY = ["requested", "emailed", "link_opened", "password_set", "logged_in"]
LINK = re.compile(r"https?://\S+/recovery/reset\?token=([A-Za-z0-9_-]+)")
# Anything as long as a 256-bit URL-safe token or a hex digest.
OPAQUE = re.compile(r"[A-Za-z0-9_-]{40,}")


def _wait_for_files(directory: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("*.eml"))) < count:
        assert time.monotonic() < deadline, f"fewer than {count} emails in {directory}"
        time.sleep(0.05)


def _wait_for_state(db_url: str, state: str, timeout: float = 30.0) -> None:
    db = Database(db_url, pool_size=1)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with db.transaction(write=False) as conn:
                if conn.execute(select(attempt_t.c.state)).scalar_one() == state:
                    return
            assert time.monotonic() < deadline, f"the attempt never reached {state}"
            time.sleep(0.02)
    finally:
        db.close()


def _stored(db_url: str) -> tuple[list[str], str]:
    """The account's password hashes (current and history) and its attempt's state."""
    db = Database(db_url, pool_size=1)
    try:
        with db.transaction(write=False) as conn:
            account = conn.execute(select(Account.__table__)).one()._mapping
            state = conn.execute(select(attempt_t.c.state)).scalar_one()
    finally:
        db.close()
    return [account["password_hash"], *account["password_history"]], state


def test_the_whole_journey_over_http_leaves_no_secret_in_the_server_log(tmp_path: Path) -> None:
    """Request, email over SMTP, link, new password, sign-in and session all work against the
    served process, which then stops with status 0 on SIGTERM, and its output holds none of
    the token, passwords, session token or hashes it handled."""
    db_url = f"sqlite:///{tmp_path / 'recovery.db'}"
    with SmtpSink() as sink:
        env = {"RECOVERY_DATABASE_URL": db_url, "RECOVERY_MAIL_URL": sink.url}
        with running_service(env, cwd=tmp_path) as service:
            created = run_recovery(
                "accounts", "create", "--email", EMAIL, "--name", "Noor Haddad",
                "--password-stdin", env=service.env, cwd=tmp_path, input=OLD_PASSWORD + "\n",
            )  # fmt: skip
            assert created.returncode == 0, created.stderr

            with service.client() as http:
                asked = http.post("/api/recovery", json={"email": EMAIL.upper()})
                assert (asked.status_code, asked.json()) == (202, {"status": "accepted"})

                [message] = sink.wait_for(1, timeout=30)
                assert message.envelope_rcpts == (EMAIL,)
                found = LINK.search(message.get_body(preferencelist=("plain",)).get_content())
                assert found is not None
                assert found.group(0).startswith(f"{service.base_url}/recovery/reset?token=")
                token = found.group(1)
                # The dispatcher stores the token's digest in the transaction that
                # records the acceptance, which commits just after the SMTP reply.
                _wait_for_state(db_url, "emailed")

                # The link itself, query string and all, as a mail client opens it.
                assert http.get(found.group(0)).status_code < 500
                verified = http.post("/api/recovery/verify", json={"token": token})
                assert verified.status_code == 200
                assert verified.json()["state"] == "link_opened"

                choice = {
                    "token": token,
                    "password": NEW_PASSWORD,
                    "password_confirm": NEW_PASSWORD,
                }
                reset = http.post("/api/recovery/password", json=choice)
                assert (reset.status_code, reset.json()) == (200, {"state": "password_set"})
                reused = http.post("/api/recovery/password", json=choice)
                assert reused.status_code in (409, 410)

                stale = http.post("/api/login", json={"email": EMAIL, "password": OLD_PASSWORD})
                assert stale.status_code == 401
                login = http.post("/api/login", json={"email": EMAIL, "password": NEW_PASSWORD})
                assert login.status_code == 200
                session_token = login.json()["session_token"]
                me = http.get("/api/session", headers={"Authorization": f"Bearer {session_token}"})
                assert me.status_code == 200
                assert "@" in me.json()["email_masked"]

            # The "your password was changed" notice follows the link email.
            notice = sink.wait_for(2, timeout=30)[1]
            assert notice.envelope_rcpts == (EMAIL,)
            hashes, state = _stored(db_url)
            assert state == "logged_in"
            assert service.stop(signal.SIGTERM) == 0

    log = service.log()
    # The check below is not vacuous: the server did log the requests it served.
    for line in ("POST /api/recovery 202", "POST /api/recovery/verify 200", "POST /api/login 200"):
        assert line in log
    secrets_seen = {
        "link token": token,
        "link token digest": token_hash(token),
        "old password": OLD_PASSWORD,
        "new password": NEW_PASSWORD,
        "session token": session_token,
        "session token digest": token_hash(session_token),
        **{f"password hash {i}": h for i, h in enumerate(hashes)},
    }
    leaked = [name for name, secret in secrets_seen.items() if secret in log]
    assert leaked == [], f"the server log holds: {leaked}"
    assert "Finished server process" in log


def test_recovery_demo_prints_the_five_states_in_order_against_a_served_instance(
    tmp_path: Path,
) -> None:
    """`recovery demo`, with the server's own environment (file transport), walks the journey
    and prints requested → emailed → link_opened → password_set → logged_in and no secret;
    the server then stops with status 0 on SIGINT."""
    env = {
        "RECOVERY_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'recovery.db'}",
        "RECOVERY_MAIL_URL": f"file://{tmp_path / 'var' / 'mail'}",
    }
    with running_service(env, cwd=tmp_path) as service:
        demo = run_recovery("demo", env=service.env, cwd=tmp_path)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        # The link, then the "your password was changed" notice.
        _wait_for_files(tmp_path / "var" / "mail", 2)
        assert service.stop(signal.SIGINT) == 0

    lines = demo.stdout.splitlines()
    printed = [line.split()[0] for line in lines if line.split() and line.split()[0] in JOURNEY]
    assert printed == JOURNEY
    assert lines[-1] == "journey: " + " → ".join(JOURNEY)
    assert OPAQUE.search(demo.stdout) is None, "the demo printed something token-like"


def test_recovery_demo_with_code_types_the_code_and_never_opens_the_link(
    tmp_path: Path,
) -> None:
    """`recovery demo --code` walks the same five states with the email's code
    (POST /api/recovery/code) instead of the link: no open_link in the attempt's log,
    its route is the code, and no code or token is printed."""
    env = {
        "RECOVERY_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'recovery.db'}",
        "RECOVERY_MAIL_URL": f"file://{tmp_path / 'var' / 'mail'}",
    }
    with running_service(env, cwd=tmp_path) as service:
        demo = run_recovery("demo", "--code", env=service.env, cwd=tmp_path)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        _wait_for_files(tmp_path / "var" / "mail", 2)
        assert service.stop(signal.SIGINT) == 0

    lines = demo.stdout.splitlines()
    printed = [line.split()[0] for line in lines if line.split() and line.split()[0] in JOURNEY]
    assert printed == JOURNEY
    assert lines[-1] == "journey: " + " → ".join(JOURNEY) + " (by the code)"
    assert any("POST /api/recovery/code -> 200" in line for line in lines), lines
    assert not any("/api/recovery/verify" in line for line in lines), lines
    assert OPAQUE.search(demo.stdout) is None, "the demo printed something token-like"
    codes = [
        found
        for mail in (tmp_path / "var" / "mail").glob("*.eml")
        for found in re.findall(r"^(\d{6})\s*$", mail.read_text(), flags=re.MULTILINE)
    ]
    assert len(codes) == 1
    assert codes[0] not in demo.stdout, "the demo printed the code"
    database = Database(env["RECOVERY_DATABASE_URL"])
    try:
        with database.transaction(write=False) as conn:
            [attempt_id] = conn.execute(select(attempt_t.c.id)).scalars().all()
        from engine import Engine
        from flows import registry

        history = Engine(database, registry()).history_sync(attempt_id)
    finally:
        database.close()
    events = [(e.event, e.accepted) for e in history]
    assert ("enter_code", True) in events and ("open_link", True) not in events
