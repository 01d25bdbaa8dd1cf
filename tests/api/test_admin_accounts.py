"""The accounts admin API over HTTP, on SQLite and PostgreSQL: its role, reading and listing,
creating and importing (hash formats, all-or-nothing, every bad row named), changing the
address, disabling, deleting.

Real parts: the app from `create_app`, its own worker writing .eml files, cheap-profile
Argon2 for our hashes, and real bcrypt, PBKDF2 and Argon2 hashes made by their libraries
with other parameters for the imported ones.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import argon2
import bcrypt
import pytest
from freezegun import freeze_time
from sqlalchemy import select

from api.accounts.models import Account, LoginSession
from engine.core import attempt_t, event_t
from tests.api import cases
from tests.api.conftest import NEW_PASSWORD, OLD_PASSWORD, Api, assert_error

ADMIN = "/api/admin/accounts"
VOLATILE_HEADERS = {"date", "x-request-id"}
# Imported hashes, as the other systems made them.
FOREIGN_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def django_hash(password: str, salt: str = "pepper", iterations: int = 1000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


HASHERS = {
    "argon2": FOREIGN_ARGON2.hash,
    "bcrypt": bcrypt_hash,
    "pbkdf2_sha256": django_hash,
}


def admin(api: Api) -> dict[str, str]:
    """The headers of the application's admin key (made once per test app)."""
    if not hasattr(api, "admin_headers"):
        api.admin_headers = api.support_headers("admin", name="app-admin")  # type: ignore[attr-defined]
    return api.admin_headers  # type: ignore[attr-defined,no-any-return]


def stored(api: Api, email: str) -> Account:
    with api.services.engine.db.transaction(write=False) as conn:
        row = conn.execute(
            select(Account.__table__).where(Account.__table__.c.email_normalized == email)
        ).one()
    return Account(**row._mapping)


def login(api: Api, email: str, password: str) -> Any:
    return api.client.post("/api/login", json={"email": email, "password": password})


# -- the role --------------------------------------------------------------------------------------


def test_the_admin_api_needs_a_key_of_role_admin_and_audits_every_call(api: Api) -> None:
    """No key: 401; a read or write support key: 403; an admin key: 200. Each call, and
    each refusal by a known key, is in the audit log under the key's name."""
    assert_error(api.client.get(ADMIN), 401, "unauthorized")
    for role in ("read", "write"):
        headers = api.support_headers(role, name=f"support-{role}")
        assert_error(api.client.get(ADMIN, headers=headers), 403, "forbidden")
    headers = admin(api)
    assert api.client.get(ADMIN, headers=headers).status_code == 200
    assert_error(api.client.get(f"{ADMIN}/not-an-id", headers=headers), 404, "account_not_found")
    audit = api.client.get("/api/support/audit", headers=headers).json()["items"]
    seen = [(i["key_name"], i["action"], i["detail"].get("outcome")) for i in audit]
    assert ("app-admin", "admin.accounts.list", "ok") in seen
    assert ("app-admin", "admin.accounts.read", "account_not_found") in seen
    assert ("support-read", "refused", "forbidden") in seen
    assert ("support-write", "refused", "forbidden") in seen


# -- reading and creating --------------------------------------------------------------------------


def test_an_account_is_created_then_read_and_listed_masked_in_keyset_pages(api: Api) -> None:
    """Create answers 201 with the account (no hash); the list masks addresses and pages by
    keyset; `?email=` finds one address; a taken address is 409, a weak password 422."""
    headers = admin(api)
    created = api.client.post(
        ADMIN,
        json={
            "email": "Ada@Example.com",
            "name": "Ada Lovelace",
            "locale": "fr",
            "birth_date": "1815-12-10",
            "password": OLD_PASSWORD,
        },
        headers=headers,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["email"] == "Ada@Example.com" and body["password_scheme"] == "argon2"
    assert (body["locale"], body["birth_date"], body["disabled"]) == ("fr", "1815-12-10", False)
    assert "hash" not in json.dumps({k: v for k, v in body.items() if k != "password_scheme"})
    assert api.client.get(f"{ADMIN}/{body['id']}", headers=headers).json() == body
    for i in range(4):
        api.account(f"user{i}@example.com", name=f"User {i}")
    assert_error(
        api.client.post(
            ADMIN,
            json={"email": "ada@example.com", "name": "Ada", "password": NEW_PASSWORD},
            headers=headers,
        ),
        409,
        "account_exists",
    )
    weak = api.client.post(
        ADMIN, json={"email": "b@example.com", "name": "B", "password": "short"}, headers=headers
    )
    assert {d["code"] for d in assert_error(weak, 422, "password_policy")["details"]} >= {
        "too_short"
    }

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get(ADMIN, params=params, headers=headers).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len({i["id"] for i in seen}) == 5
    assert seen[-1]["email_masked"] == "a***a@e***e.com"
    assert all("@" in i["email_masked"] and "***" in i["email_masked"] for i in seen)
    found = api.client.get(ADMIN, params={"email": "USER2@example.com"}, headers=headers).json()
    assert [i["email_masked"] for i in found["items"]] == ["u***2@e***e.com"]


# -- importing -------------------------------------------------------------------------------------


def _password(i: int) -> str:
    """A password of its own for row `i` (letters, so no digit of the row's name is in it)."""
    letters = "".join(chr(ord("a") + int(d)) for d in f"{i:05d}")
    return f"Sable-Orchid-{letters}-58!"


def test_ten_thousand_accounts_with_mixed_hashes_import_and_each_form_signs_in_rehashed(
    make_api: Callable[..., Api],
) -> None:
    """10,000 rows (Argon2 of other parameters, bcrypt, Django PBKDF2, some plain passwords)
    in one request: 200 `{"created": 10000}`. A sample of each form signs in with its
    password, is rehashed to our Argon2 then (the credential version kept), signs in again,
    and a wrong password still fails."""
    api = make_api(public_rate_limit_per_minute=1000)
    headers = admin(api)
    shared = {scheme: make(_password(0)) for scheme, make in HASHERS.items()}
    sample = {scheme: [] for scheme in (*HASHERS, "plain")}
    rows = []
    schemes = [*HASHERS, *HASHERS, *HASHERS]
    for i in range(10_000):
        email = f"person{i:05d}@example.com"
        row: dict[str, Any] = {"email": email, "name": f"Person {i}"}
        if i % 500 == 7:
            row["password"] = _password(i)
            sample["plain"].append((email, _password(i)))
        else:
            scheme = schemes[i % len(schemes)]
            if len(sample[scheme]) < 3:
                row["password_hash"] = HASHERS[scheme](_password(i))
                sample[scheme].append((email, _password(i)))
            else:
                row["password_hash"] = shared[scheme]
        if i % 3 == 0:
            row["locale"] = "fr"
        rows.append(row)
    answer = api.client.post(f"{ADMIN}/import", json={"accounts": rows}, headers=headers)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json() == {"created": 10_000}
    assert api.count(Account.__table__) == 10_000

    for scheme, accounts in sample.items():
        assert len(accounts) >= 3, scheme
        for email, password in accounts[:3]:
            before = stored(api, email)
            assert_error(login(api, email, password + "x"), 401, "invalid_credentials")
            first = login(api, email, password)
            assert first.status_code == 200, (scheme, first.text)
            after = stored(api, email)
            assert after.password_hash.startswith("$argon2id$")
            if scheme != "plain":
                assert after.password_hash != before.password_hash, scheme
            assert argon2.extract_parameters(after.password_hash).memory_cost == 8  # ours
            assert after.credential_version == before.credential_version
            assert after.password_history[0] == after.password_hash
            assert login(api, email, password).status_code == 200
            detail = api.client.get(f"{ADMIN}/{first.json()['account_id']}", headers=headers).json()
            assert detail["password_scheme"] == "argon2"
    # An account that has not signed in keeps the hash it came with.
    assert stored(api, "person09999@example.com").password_hash in shared.values()


def test_an_ndjson_stream_imports_like_a_json_list_and_bcrypt_72_bytes_hold(api: Api) -> None:
    """One account per line (application/x-ndjson, blank lines ignored); bcrypt compares
    the first 72 bytes of a longer password, as the system that made it did."""
    long_password = "Long-Bcrypt-" + "x" * 80
    lines = [
        json.dumps({"email": "one@example.com", "name": "One", "password_hash": django_hash("P1")}),
        "",
        json.dumps(
            {
                "email": "two@example.com",
                "name": "Two",
                "password_hash": bcrypt.hashpw(
                    long_password.encode()[:72], bcrypt.gensalt(4)
                ).decode(),
            }
        ),
    ]
    answer = api.client.post(
        f"{ADMIN}/import",
        content="\n".join(lines).encode(),
        headers={**admin(api), "Content-Type": "application/x-ndjson"},
    )
    assert answer.json() == {"created": 2}, answer.text
    assert login(api, "one@example.com", "P1").status_code == 200
    assert login(api, "two@example.com", long_password).status_code == 200
    text = api.client.post(
        f"{ADMIN}/import", content=b"x", headers={**admin(api), "Content-Type": "text/plain"}
    )
    assert_error(text, 415, "unsupported_media_type")


def test_a_bad_row_refuses_its_batch_names_every_bad_row_and_creates_nothing(api: Api) -> None:
    """422 `import_refused` with `{"row", "code", "message"}` for each problem of each bad
    row (rows from 1), in the request's language, and no account created, not even the
    good rows'."""
    api.account("taken@example.com")
    rows = [
        {"email": "good@example.com", "name": "Good", "password_hash": django_hash("x")},
        {"email": "not-an-address", "name": "Bad", "password_hash": django_hash("x")},
        {"email": "both@example.com", "name": "B", "password": NEW_PASSWORD, "password_hash": "h"},
        {"email": "taken@example.com", "name": "T", "password_hash": django_hash("x")},
        {"email": "weak@example.com", "name": "W", "password": "weak"},
        {"email": "hash@example.com", "name": "H", "password_hash": "$1$md5$notours"},
        {"email": "GOOD@example.com", "name": "Again", "password_hash": django_hash("x")},
        {"email": "f@example.com", "name": "F", "password_hash": "$2b$31$" + "a" * 53},
        {"email": "g@example.com", "name": "", "locale": "de", "password_hash": django_hash("x")},
        {"email": "h@example.com", "name": "H", "birth_date": "14/03/1985", "password": "x"},
        ["not", "an", "object"],
        {"email": "i@example.com", "name": "I", "password_hash": django_hash("x"), "role": "x"},
    ]
    headers = admin(api)
    answer = api.client.post(f"{ADMIN}/import", json={"accounts": rows}, headers=headers)
    error = assert_error(answer, 422, "import_refused")
    found = {(d["row"], d["code"]) for d in error["details"]}
    assert found == {
        (2, "invalid_email"),
        (3, "password_or_hash"),
        (4, "account_exists"),
        (5, "password_policy"),
        (6, "unsupported_hash"),
        (7, "duplicate_email"),
        (8, "hash_too_costly"),
        (9, "invalid_name"),
        (9, "invalid_locale"),
        (10, "invalid_birth_date"),
        (11, "invalid_row"),
        (12, "unknown_field"),
    }
    assert error["message"] == "no account was created: 11 rows are not valid"
    assert all(set(d) == {"row", "code", "message"} for d in error["details"])
    assert api.count(Account.__table__) == 1
    french = api.client.post(
        f"{ADMIN}/import", json={"accounts": rows[:2]}, headers={**headers, "Accept-Language": "fr"}
    )
    error = assert_error(french, 422, "import_refused")
    assert error["message"] == "aucun compte n'a été créé : 1 ligne n'est pas valide"
    assert error["details"] == [
        {
            "row": 2,
            "code": "invalid_email",
            "message": "l'adresse doit être de la forme nom@example.com",
        }
    ]
    assert api.count(Account.__table__) == 1


# -- changing the address --------------------------------------------------------------------------


def test_a_new_address_tells_the_old_one_and_ends_the_journeys_that_were_live(api: Api) -> None:
    """After the change the old address gets a notice (and nothing to the new one), its
    live link is dead (superseded), sign-in takes the new address, and a reset for the
    new address works."""
    account = api.account("old@example.com", name="Olga")
    token = api.link_token("old@example.com")
    headers = admin(api)
    changed = api.client.patch(
        f"{ADMIN}/{account.id}", json={"email": "New@Example.com"}, headers=headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == "New@Example.com"
    [attempt] = api.attempts()
    assert attempt.state == "superseded"
    assert_error(api.client.post("/api/recovery/verify", json={"token": token}), 410)
    api.dispatch()
    notice = api.messages()[-1]
    assert notice["To"].addresses[0].addr_spec == "old@example.com"
    assert notice["Subject"] == "The email address of your account was changed"
    assert "new@example.com" not in notice.as_string().lower()
    assert_error(login(api, "old@example.com", OLD_PASSWORD), 401, "invalid_credentials")
    assert login(api, "new@example.com", OLD_PASSWORD).status_code == 200
    assert api.link_token("new@example.com")
    api.account("other@example.com")
    taken = api.client.patch(
        f"{ADMIN}/{account.id}", json={"email": "other@example.com"}, headers=headers
    )
    assert_error(taken, 409, "account_exists")
    renamed = api.client.patch(
        f"{ADMIN}/{account.id}",
        json={"name": "Olga K", "locale": "fr", "birth_date": "1990-01-02"},
        headers=headers,
    ).json()
    assert (renamed["name"], renamed["locale"], renamed["birth_date"]) == (
        "Olga K",
        "fr",
        "1990-01-02",
    )
    cleared = api.client.patch(f"{ADMIN}/{account.id}", json={"birth_date": None}, headers=headers)
    assert cleared.json()["birth_date"] is None
    assert_error(
        api.client.patch(f"{ADMIN}/{account.id}", json={"locale": "de"}, headers=headers),
        400,
        "invalid_input",
    )


# -- disabling -------------------------------------------------------------------------------------


def _public(api: Api, address: str) -> tuple[int, bytes, dict[str, str]]:
    answer = api.client.post("/api/recovery", json={"email": address})
    headers = {k: v for k, v in answer.headers.items() if k not in VOLATILE_HEADERS}
    return answer.status_code, answer.content, headers


def test_a_disabled_account_gets_no_email_cannot_sign_in_and_answers_like_any_address(
    api: Api,
) -> None:
    """Disabled: its sessions end, its live link dies, "Forgot password?" answers exactly
    as for an unknown address and sends nothing, sign-in fails like a wrong password.
    Enabled again: all works."""
    account = api.account("dis@example.com")
    session = login(api, "dis@example.com", OLD_PASSWORD).json()["session_token"]
    token = api.link_token("dis@example.com")
    headers = admin(api)
    answer = api.client.patch(f"{ADMIN}/{account.id}", json={"disabled": True}, headers=headers)
    assert answer.json()["disabled"] is True
    assert_error(
        api.client.get("/api/session", headers={"Authorization": f"Bearer {session}"}), 401
    )
    assert_error(api.client.post("/api/recovery/verify", json={"token": token}), 410)
    sent = len(api.messages())
    disabled = _public(api, "dis@example.com")
    unknown = _public(api, "nobody@example.com")
    assert disabled == unknown
    api.dispatch()
    assert len(api.messages()) == sent
    states = {a.subject: a.state for a in api.attempts() if a.created_at > account.created_at}
    assert states["nobody@example.com"] == "unknown_account"
    wrong = login(api, "nobody@example.com", OLD_PASSWORD)
    refused = login(api, "dis@example.com", OLD_PASSWORD)
    assert (refused.status_code, refused.json()) == (wrong.status_code, wrong.json())

    api.client.patch(f"{ADMIN}/{account.id}", json={"disabled": False}, headers=headers)
    assert login(api, "dis@example.com", OLD_PASSWORD).status_code == 200
    with after_the_cooldown(api):
        assert api.link_token("dis@example.com")


@contextlib.contextmanager
def after_the_cooldown(api: Api) -> Iterator[None]:
    """The clock moved past the resend cooldown for the block (the throttles key on the
    address, whichever account it has)."""
    later = api.services.engine.clock.now() + timedelta(
        seconds=api.settings.resend_cooldown_seconds + 1
    )
    with freeze_time(later, tick=True):
        yield


# -- deleting --------------------------------------------------------------------------------------


def test_deleting_an_account_erases_the_person_from_attempts_and_keeps_their_shape(
    api: Api,
) -> None:
    """After DELETE: 404 on the account, no session, no sign-in; its attempts keep their
    states and events (the counts are the same) but no longer hold the address, the
    typed address, the client's address or user agent; other accounts are untouched."""
    account = api.account("gone@example.com")
    other = api.account("stays@example.com")
    login(api, "gone@example.com", OLD_PASSWORD)
    token = api.link_token("gone@example.com", **{"User-Agent": "Gone's browser"})
    api.client.post("/api/recovery/verify", json={"token": token})
    api.link_token("stays@example.com")
    counts = api.services.engine.queries.counts_sync()
    headers = admin(api)
    assert api.client.delete(f"{ADMIN}/{account.id}", headers=headers).status_code == 204
    assert_error(api.client.get(f"{ADMIN}/{account.id}", headers=headers), 404)
    assert api.count(LoginSession.__table__, LoginSession.__table__.c.account_id == account.id) == 0
    assert_error(login(api, "gone@example.com", OLD_PASSWORD), 401)
    # The same attempts; the one that was live has ended.
    after = api.services.engine.queries.counts_sync()
    assert sum(after.values()) == sum(counts.values())
    assert after[("password_recovery", "superseded")] == 1
    assert ("password_recovery", "link_opened") not in after
    with api.services.engine.db.transaction(write=False) as conn:
        everything = json.dumps(
            [dict(r._mapping) for r in conn.execute(select(attempt_t))]
            + [dict(r._mapping) for r in conn.execute(select(event_t))],
            default=str,
        )
    assert "gone@example.com" not in everything
    assert "Gone's browser" not in everything
    erased = [a for a in api.attempts() if a.subject.startswith("erased:")]
    assert len(erased) == 1 and erased[0].data["client_ip"] is None
    assert api.services.engine.history_sync(erased[0].id)[0].detail == {"client_ip": None}
    assert [a.subject for a in api.attempts() if not a.subject.startswith("erased:")] == [
        "stays@example.com"
    ]
    assert login(api, "stays@example.com", OLD_PASSWORD).status_code == 200
    assert stored(api, other.email_normalized).id == other.id
    support = api.client.get(f"/api/support/attempts/{erased[0].id}", headers=headers)
    assert support.status_code == 200 and "gone" not in support.text


def test_deleting_an_account_erases_its_support_handled_case_too(api: Api) -> None:
    """A confirmed "I can't access this email" case holds the person's statement, name,
    birth date and new contact address: after DELETE none of them is stored anywhere,
    and the case keeps its flow, state and events."""
    account = api.account("jane.doe@example.com")
    case_id = cases.confirmed_case(api, birth_date="1985-03-14")
    before = [(e.event, e.to_state) for e in api.services.engine.history_sync(uuid.UUID(case_id))]
    headers = admin(api)
    assert api.client.delete(f"{ADMIN}/{account.id}", headers=headers).status_code == 204
    with api.services.engine.db.transaction(write=False) as conn:
        everything = json.dumps(
            [dict(r._mapping) for r in conn.execute(select(attempt_t))]
            + [dict(r._mapping) for r in conn.execute(select(event_t))],
            default=str,
        )
    for personal in (
        "jane.doe@example.com",
        cases.CONTACT,
        cases.STATEMENT,
        "Jane Doe",
        "1985-03-14",
    ):
        assert personal not in everything, personal
    case = api.services.engine.read_sync(uuid.UUID(case_id))
    assert case.flow == cases.FLOW and case.subject.startswith("erased:")
    after = [(e.event, e.to_state) for e in api.services.engine.history_sync(case.id)]
    assert after[: len(before)] == before


@pytest.mark.parametrize("body", [{}, {"disabled": "yes"}, {"email": "nope"}, {"role": "x"}])
def test_a_change_with_bad_fields_is_a_400_and_changes_nothing(api: Api, body: Any) -> None:
    account = api.account("same@example.com")
    answer = api.client.patch(f"{ADMIN}/{account.id}", json=body, headers=admin(api))
    assert_error(answer, 400, "invalid_input")
    assert stored(api, "same@example.com").model_dump() == account.model_dump()
