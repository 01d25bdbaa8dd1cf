"""Every product internal the issue-17 bench modules use, imported in this one place.

The floors and figures of issue 17 drive the product from outside wherever
they can: over HTTP (`recovery serve`), through the `recovery` command
(`worker`, `reset-all`), and through the database schema, which is a stored
contract. What cannot be driven from outside is imported here, so when a
product module moves (the refactor of `flows/` and `api/`) this is the one
file of those modules to change:

- the attempt and event tables (`engine.core`): the bare-INSERT floor writes
  the very rows `POST /api/recovery` writes, through the same column types,
  and the queue depth is counted from them;
- the recovery email (`api.mail.messages.recovery_email`): the SMTP floor
  sends the same rendered message the worker sends;
- how many sends a worker runs at once (`api.services`): the SMTP floor opens
  as many persistent connections;
- the engine's `Database` (`engine`), which `bench.env`'s loaders take, to seed
  accounts and backlogs.

The older bench modules (engine, sweep, support list, http, enumeration,
hashing, dispatch, chaos, and `bench.env`) still import what they use
themselves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from api.mail.messages import recovery_email
from api.services import MAX_CONCURRENT_SENDS
from engine import Database
from engine.core import START_EVENT, attempt_t, event_t

__all__ = [
    "FLOW",
    "MAX_CONCURRENT_SENDS",
    "REQUEST_TTL",
    "START_EVENT",
    "Database",
    "attempt_t",
    "child_env",
    "event_t",
    "has_command",
    "recovery_command",
    "recovery_message",
]

ROOT = Path(__file__).resolve().parent.parent
# Stored values (a contract, SPEC §3 and the flow's deadlines): the flow's name,
# and how long a `requested` attempt may wait before it expires.
FLOW = "password_recovery"
REQUEST_TTL = timedelta(hours=24)
MAIL_FROM = "Account recovery <no-reply@localhost>"


def recovery_message(to: str, reference: str = "ABCD-EFGH") -> EmailMessage:
    """A recovery email as the dispatcher renders it (a 43-character token in its links)."""
    now = datetime.now(UTC)
    token = "x" * 43
    return recovery_email(
        locale="en",
        to=to,
        mail_from=MAIL_FROM,
        link=f"http://127.0.0.1:8000/recovery/reset?token={token}",
        cancel_link=f"http://127.0.0.1:8000/recovery/cancel?token={token}",
        expires_at=now + timedelta(hours=1),
        reference=reference,
        name="Person",
        sent_at=now,
    )


def recovery_command() -> list[str]:
    """The `recovery` command (SPEC §7): the console script beside this interpreter."""
    script = Path(sys.executable).with_name("recovery")
    if script.exists():
        return [str(script)]
    found = shutil.which("recovery")
    if found is not None:
        return [found]
    # Not installed as a script (a bare checkout): the entry point pyproject.toml names.
    return [sys.executable, "-c", "from api.cli import main; raise SystemExit(main())"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without any `RECOVERY_*`, this checkout first on the path, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVERY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def has_command(*words: str) -> bool:
    """Whether `recovery WORDS... --help` exits 0 (the command exists in this build)."""
    try:
        done = subprocess.run(
            [*recovery_command(), *words, "--help"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
