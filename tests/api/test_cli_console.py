"""The console's command line, run as a real subprocess on SQLite and PostgreSQL:
`recovery support-agent create`, and `recovery attempts show` with a spoken reference."""

from __future__ import annotations

import re
from pathlib import Path

import pyotp
from sqlalchemy import select

from api.support.models import SupportAgent
from api.support.reference import support_reference
from engine import Engine
from flows.password_recovery import NAME
from tests.api.test_cli import _env, _one_line, engine, migrated_url  # noqa: F401  (fixtures)
from tests.support.service import run_recovery

PASSWORD = "Harbor!Velvet-5820-Lantern"
agent_t = SupportAgent.__table__


def _agents(on: Engine) -> list[dict[str, object]]:
    with on.db.transaction(write=False) as conn:
        return [dict(r._mapping) for r in conn.execute(select(agent_t))]


def test_support_agent_create_prints_a_write_agents_totp_seed_once_and_stores_a_hash(
    migrated_url: str,  # noqa: F811
    engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A write agent gets an Argon2id hash of the stdin password and a TOTP seed printed with
    its otpauth URI; a read agent gets no seed unless asked; the password is never printed."""
    made = run_recovery(
        "support-agent", "create", "--email", "Alice@Support.example.com", "--name", "Alice",
        "--role", "write", "--time-zone", "Europe/Paris", "--password-stdin",
        env=_env(migrated_url), cwd=tmp_path, input=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    seed = re.search(r"^totp-secret: ([A-Z2-7]+)$", made.stdout, re.MULTILINE)
    assert seed, made.stdout
    assert "otpauth://totp/" in made.stdout
    reader = run_recovery(
        "support-agent", "create", "--email", "bob@support.example.com", "--name", "Bob",
        "--role", "read", "--password-stdin",
        env=_env(migrated_url), cwd=tmp_path, input=PASSWORD + "\n",
    )  # fmt: skip
    assert reader.returncode == 0, reader.stderr
    assert "totp-secret" not in reader.stdout
    rows = {r["email_normalized"]: r for r in _agents(engine)}
    alice, bob = rows["alice@support.example.com"], rows["bob@support.example.com"]
    assert str(alice["password_hash"]).startswith("$argon2id$")
    assert alice["totp_secret"] == seed.group(1)
    assert pyotp.TOTP(seed.group(1)).now().isdigit()
    assert (alice["role"], alice["time_zone"]) == ("write", "Europe/Paris")
    assert (bob["role"], bob["totp_secret"], bob["time_zone"]) == ("read", None, "UTC")


def test_support_agent_create_refuses_a_weak_password_and_a_duplicate_with_one_line(
    migrated_url: str,  # noqa: F811
    engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A weak password, then the same address in another case, each exit 1 with one line and
    leave one agent."""
    weak = run_recovery(
        "support-agent", "create", "--email", "carol@support.example.com", "--name", "Carol",
        "--role", "read", "--password-stdin",
        env=_env(migrated_url), cwd=tmp_path, input="carol\n",
    )  # fmt: skip
    assert weak.returncode == 1
    assert "too_short" in _one_line(weak.stderr)
    assert _agents(engine) == []
    for email in ("carol@support.example.com", "CAROL@support.example.com"):
        run = run_recovery(
            "support-agent", "create", "--email", email, "--name", "Carol",
            "--role", "read", "--password-stdin",
            env=_env(migrated_url), cwd=tmp_path, input=PASSWORD + "\n",
        )  # fmt: skip
    assert run.returncode == 1
    _one_line(run.stderr)
    assert len(_agents(engine)) == 1


def test_attempts_show_takes_the_reference_as_a_person_reads_it_out(
    migrated_url: str,  # noqa: F811
    engine: Engine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The reference, lower-cased and spelled out with spaces, finds the attempt."""
    attempt = engine.start_sync(NAME, subject="marie.curie@example.com", actor="person")
    spoken = " ".join(support_reference(attempt.id).replace("-", "")).lower()
    show = run_recovery("attempts", "show", spoken, env=_env(migrated_url), cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert str(attempt.id) in show.stdout
    assert support_reference(attempt.id) in show.stdout
