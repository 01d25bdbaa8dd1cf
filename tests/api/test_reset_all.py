"""`recovery reset-all`, a forced reset after a breach (SPEC §9), on SQLite and PostgreSQL.

In process against the application's own services (the real dispatcher writes the
mail to files), then as the real command in a subprocess. A crash is a real
failure: an exception between batches, or a statement the database refuses in
the middle of one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update

from api.accounts.models import Account, ForcedReset, LoginSession
from api.accounts.passwords import UNUSABLE_PASSWORD
from api.reset_all import ResetRefused, read_account_list, reset_all
from flows.password_recovery import FORCED_RESET, NAME
from tests.api.conftest import NEW_PASSWORD, OLD_PASSWORD, Api, assert_error
from tests.support.service import run_recovery

account_t = Account.__table__
run_t = ForcedReset.__table__
session_t = LoginSession.__table__
DEAD = ("link_superseded", "link_revoked", "link_dead")


class Crash(Exception):
    """Stands for the process dying between two batches."""


def _sign_in(api: Api, address: str, password: str = OLD_PASSWORD) -> Any:
    return api.client.post("/api/login", json={"email": address, "password": password})


def _session_ok(api: Api, token: str) -> bool:
    headers = {"Authorization": f"Bearer {token}"}
    return api.client.get("/api/session", headers=headers).status_code == 200


def _forced(api: Api) -> dict[str, int]:
    """How many forced-reset attempts each address has."""
    counts: dict[str, int] = {}
    for attempt in api.attempts():
        if attempt.flow == NAME and attempt.data.get("requested_by") == FORCED_RESET:
            counts[attempt.subject] = counts.get(attempt.subject, 0) + 1
    return counts


def _recipients(api: Api) -> list[str]:
    return sorted(parseaddr(str(m["To"]))[1].lower() for m in api.messages())


def _people(api: Api, n: int) -> list[str]:
    addresses = [f"person-{i}@example.com" for i in range(n)]
    for address in addresses:
        api.account(address, name=f"Person {address[7]}")
    return addresses


def test_reset_all_ends_sessions_kills_the_password_and_emails_each_account_one_link(
    api: Api,
) -> None:
    """Every account: its sessions end, the old password and old links stop working, and
    one recovery email per account arrives through the normal flow, whose link sets a
    new password that signs in."""
    addresses = _people(api, 3)
    signed_in = _sign_in(api, addresses[0])
    assert signed_in.status_code == 200
    session = signed_in.json()["session_token"]
    old_link = api.link_token(addresses[1])

    summary = reset_all(api.services)

    assert (summary.total, summary.reset, summary.emailed) == (3, 3, 3)
    assert summary.sessions_ended == 1 and not summary.resumed
    assert not _session_ok(api, session)
    for address in addresses:
        # The old password gets exactly the answer a wrong one gets.
        assert_error(_sign_in(api, address), 401, "invalid_credentials")
    assert api.client.post("/api/recovery/verify", json={"token": old_link}).status_code == 410
    assert _forced(api) == {address: 1 for address in addresses}

    api.dispatch()
    assert _recipients(api) == sorted([*addresses, addresses[1]])
    reset = api.client.post(
        "/api/recovery/password",
        json={
            "token": api.tokens_sent()[-1],
            "password": NEW_PASSWORD,
            "password_confirm": NEW_PASSWORD,
        },
    )
    assert reset.status_code == 200, reset.text
    assert [a for a in addresses if _sign_in(api, a, NEW_PASSWORD).status_code == 200]


def test_the_old_password_cannot_be_chosen_again_after_a_forced_reset(api: Api) -> None:
    """The history is kept: the breached password is refused as the new one."""
    [address] = _people(api, 1)
    reset_all(api.services)
    api.dispatch()
    token = api.tokens_sent()[-1]
    answer = api.client.post(
        "/api/recovery/password",
        json={"token": token, "password": OLD_PASSWORD, "password_confirm": OLD_PASSWORD},
    )
    error = assert_error(answer, 422, "password_policy")
    assert [d["code"] for d in error["details"]] == ["reused_password"]
    assert _sign_in(api, address).status_code == 401


def test_a_run_stopped_between_batches_resumes_and_mails_nobody_twice(api: Api) -> None:
    """A run that dies after its first batch is resumed by the next reset-all: every
    account is reset once, and each gets exactly one email."""
    addresses = _people(api, 5)
    seen: list[int] = []

    def die_after_first_batch(done: int, total: int) -> None:
        seen.append(done)
        if done >= 2:
            raise Crash()

    with pytest.raises(Crash):
        reset_all(api.services, progress=die_after_first_batch, batch_size=2)
    assert sum(_forced(api).values()) == 2
    api.dispatch()  # the worker mails the first batch meanwhile

    summary = reset_all(api.services, batch_size=2)

    assert summary.resumed and (summary.total, summary.reset, summary.emailed) == (5, 5, 5)
    assert _forced(api) == {address: 1 for address in addresses}
    api.dispatch()
    assert _recipients(api) == sorted(addresses)
    with api.services.engine.db.transaction(write=False) as conn:
        assert conn.execute(select(run_t.c.finished_at)).scalar_one() is not None


def test_a_batch_that_fails_midway_changes_nothing_and_the_rerun_completes_it(
    api: Api,
) -> None:
    """The database refusing a statement in the middle of a batch rolls the whole batch
    back (passwords, sessions, attempts): the rerun resets and mails those accounts once."""
    addresses = _people(api, 4)
    session = _sign_in(api, addresses[3]).json()["session_token"]
    db_engine = api.services.engine.db.engine
    inserts = 0

    def refuse_the_second_batch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal inserts
        if statement.lstrip().upper().startswith("INSERT INTO ATTEMPT_EVENT"):
            inserts += 1
            if inserts == 2:
                raise Crash()

    event.listen(db_engine, "before_cursor_execute", refuse_the_second_batch)
    try:
        with pytest.raises(Crash):
            reset_all(api.services, batch_size=2)
    finally:
        event.remove(db_engine, "before_cursor_execute", refuse_the_second_batch)

    assert sum(_forced(api).values()) == 2
    with api.services.engine.db.transaction(write=False) as conn:
        hashes = conn.execute(select(account_t.c.password_hash)).scalars().all()
    assert sorted(h == UNUSABLE_PASSWORD for h in hashes) == [False, False, True, True]

    summary = reset_all(api.services, batch_size=2)
    assert summary.resumed and summary.reset == 4
    assert _forced(api) == {address: 1 for address in addresses}
    assert not _session_ok(api, session)
    api.dispatch()
    assert _recipients(api) == sorted(addresses)


def test_only_the_listed_accounts_are_reset(api: Api, tmp_path: Path) -> None:
    """A list of addresses and ids resets those accounts alone; an unknown address is
    counted, and the others keep their password and sessions."""
    addresses = _people(api, 4)
    kept_session = _sign_in(api, addresses[3]).json()["session_token"]
    by_id = api.services.accounts.by_address_sync(addresses[1])
    assert by_id is not None
    listing = tmp_path / "breached.txt"
    listing.write_text(
        f"# breached\n{addresses[0].upper()}\n\n{by_id.id}\nnobody@example.com\n{addresses[0]}\n"
    )

    summary = reset_all(api.services, read_account_list(listing))

    assert (summary.total, summary.reset, summary.not_found) == (2, 2, 1)
    assert set(_forced(api)) == {addresses[0], addresses[1]}
    assert _sign_in(api, addresses[2]).status_code == 200
    assert _session_ok(api, kept_session)


def test_a_disabled_account_is_reset_but_not_emailed(api: Api) -> None:
    """A disabled account's password dies with the others', and it is sent nothing."""
    addresses = _people(api, 2)
    with api.services.engine.db.transaction() as conn:
        conn.execute(
            update(account_t)
            .where(account_t.c.email_normalized == addresses[0])
            .values(disabled=True)
        )
    summary = reset_all(api.services)
    assert (summary.reset, summary.emailed, summary.disabled) == (2, 1, 1)
    api.dispatch()
    assert _recipients(api) == [addresses[1]]
    with api.services.engine.db.transaction(write=False) as conn:
        assert set(conn.execute(select(account_t.c.password_hash)).scalars()) == {UNUSABLE_PASSWORD}


def test_a_different_selection_is_refused_while_a_run_is_unfinished(
    api: Api, tmp_path: Path
) -> None:
    """An unfinished run for every account refuses a list (and nothing changes); the same
    selection resumes it."""
    _people(api, 3)
    with pytest.raises(Crash):
        reset_all(api.services, progress=_crash_after_first, batch_size=1)
    listing = tmp_path / "list.txt"
    listing.write_text("person-2@example.com\n")
    before = _forced(api)
    with pytest.raises(ResetRefused, match="unfinished reset-all"):
        reset_all(api.services, read_account_list(listing))
    assert _forced(api) == before
    assert reset_all(api.services).reset == 3


def _crash_after_first(done: int, total: int) -> None:
    if done >= 1:
        raise Crash()


def test_a_bad_list_is_refused_with_its_line_and_changes_nothing(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("ok@example.com\nnot an address\n")
    with pytest.raises(ResetRefused, match="line 2"):
        read_account_list(listing)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ResetRefused, match="lists no account"):
        read_account_list(empty)


# -- the command itself -------------------------------------------------------------------


@pytest.fixture
def command_env(api: Api) -> Iterator[dict[str, str]]:
    yield {
        "RECOVERY_DATABASE_URL": api.settings.database_url,
        "RECOVERY_MAIL_URL": f"file://{api.mailbox}",
    }


def test_the_command_resets_every_account_and_prints_a_summary(
    api: Api, command_env: dict[str, str], tmp_path: Path
) -> None:
    """`recovery reset-all` exits 0 with a summary as its last line; the worker then
    mails each account once."""
    addresses = _people(api, 3)
    session = _sign_in(api, addresses[2]).json()["session_token"]
    done = run_recovery("reset-all", env=command_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "reset 3 of 3 accounts: 1 session ended, 3 recovery emails queued"
    )
    assert "3/3" in done.stderr  # the progress bar's last state
    assert not _session_ok(api, session)
    api.dispatch()
    assert _recipients(api) == sorted(addresses)


def test_the_command_resumes_a_crashed_run_and_refuses_a_bad_list(
    api: Api, command_env: dict[str, str], tmp_path: Path
) -> None:
    """After a run died mid-way, `recovery reset-all` says it resumes it and finishes it;
    a list with a bad line exits 1 with one line naming it, changing nothing."""
    addresses = _people(api, 3)
    with pytest.raises(Crash):
        reset_all(api.services, progress=_crash_after_first, batch_size=1)
    bad = tmp_path / "bad.txt"
    bad.write_text("person-0@example.com\nnot-an-address\n")
    refused = run_recovery("reset-all", "--accounts", str(bad), env=command_env, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"recovery: {bad}, line 2: neither an email address nor an account id"
    ]
    assert sum(_forced(api).values()) == 1

    done = run_recovery("reset-all", env=command_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resumed the unfinished run" in done.stdout
    assert "reset 3 of 3 accounts" in done.stdout
    api.dispatch()
    assert _recipients(api) == sorted(addresses)
    with api.services.engine.db.transaction(write=False) as conn:
        runs = conn.execute(select(run_t.c.id)).scalars().all()
    assert len(runs) == 1 and isinstance(runs[0], uuid.UUID)
