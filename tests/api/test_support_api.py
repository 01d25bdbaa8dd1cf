"""The support API over HTTP, on SQLite and PostgreSQL: keys and roles, masked lists with
keyset pagination and filters, the attempt detail, cancel, resend, stats, the audit log,
and that support never sees a secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from api.accounts.models import Account
from api.accounts.tokens import token_hash
from api.errors import InvalidInput
from api.support.models import AuditEntry, SupportKey
from api.support.reference import support_reference
from flows import password_recovery
from tests.api.conftest import NEW_PASSWORD, OLD_PASSWORD, Api, assert_error
from tests.support.tools import require

T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
DETAIL_KEYS = {
    "flow_detail",
    "id",
    "reference",
    "flow",
    "flow_version",
    "route",
    "state",
    "created_at",
    "updated_at",
    "deadline_at",
    "email_masked",
    "locale",
    "client_ip",
    "user_agent",
    "delivery",
    "timeline",
    "allowed_events",
    "support_events",
}


def _request(api: Api, address: str, locale: str = "en") -> None:
    """A "Forgot password?" request straight through the service (no HTTP rate limit)."""
    asyncio.run(
        password_recovery.request(
            api.services, address, locale=locale, client_ip="198.51.100.7", user_agent="agent/1.0"
        )
    )


def _password(token: str, password: str = NEW_PASSWORD) -> dict[str, str]:
    return {"token": token, "password": password, "password_confirm": password}


# -- keys and roles ----------------------------------------------------------------------------


def test_support_keys_are_stored_hashed_and_shown_once(api: Api) -> None:
    key = api.services.support.create_key_sync("alice", "read")
    with api.services.engine.db.transaction(write=False) as conn:
        row = conn.execute(select(SupportKey.__table__)).one()
    assert row.name == "alice" and row.role == "read"
    assert key not in str(tuple(row)) and len(row.key_hash) == 64
    assert api.services.support.authenticate_sync(key) == ("alice", "read")
    assert api.services.support.authenticate_sync(key + "x") is None


def test_no_or_unknown_key_is_401_and_a_read_key_on_a_write_route_is_403(api: Api) -> None:
    reader = api.support_headers("read")
    writer = api.support_headers("write")
    some_id = "00000000-0000-4000-8000-000000000000"
    reads = [
        ("get", "/api/support/attempts"),
        ("get", f"/api/support/attempts/{some_id}"),
        ("get", f"/api/support/attempts/{some_id}/diagram?format=mermaid"),
        ("get", "/api/support/stats"),
        ("get", "/api/support/audit"),
    ]
    writes = [
        ("post", f"/api/support/attempts/{some_id}/cancel"),
        ("post", f"/api/support/attempts/{some_id}/resend"),
    ]
    for method, path in reads + writes:
        for headers in (
            {},
            {"Authorization": "Bearer rsk_not-a-key"},
            {"Authorization": "Basic YWxpY2U6cGFzcw=="},
        ):
            if method == "get":
                answer = api.client.get(path, headers=headers)
            else:
                answer = api.client.post(path, headers=headers, json={"reason": "r"})
            assert_error(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == "Bearer"
    for _, path in writes:
        answer = api.client.post(path, headers=reader, json={"reason": "r"})
        assert_error(answer, 403, "forbidden")
    for method, path in reads:
        assert getattr(api.client, method)(path, headers=writer).status_code in (200, 404)
    # Nothing was done by the refused requests.
    assert api.attempts() == []


# -- listing ------------------------------------------------------------------------------------


def test_lists_are_masked_newest_first_and_paged_by_keyset_cursor(api: Api) -> None:
    reader = api.support_headers("read")
    with freeze_time(T0, real_asyncio=True) as clock:
        for i in range(7):
            _request(api, f"person{i}@example.com")
            clock.tick(1 if i != 3 else 0)  # two attempts share one instant
        seen: list[dict[str, Any]] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            answer = api.client.get("/api/support/attempts", params=params, headers=reader)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert set(body) == {"items", "next_cursor"}
            seen += body["items"]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
    assert pages == 3
    assert len(seen) == 7 and len({i["id"] for i in seen}) == 7
    keys = [(i["created_at"], i["id"]) for i in seen]
    assert keys == sorted(keys, reverse=True)
    for item in seen:
        assert set(item) == {
            "id",
            "reference",
            "flow",
            "state",
            "email_masked",
            "created_at",
            "updated_at",
            "deadline_at",
        }
        assert "@example.com" not in item["email_masked"] and "***" in item["email_masked"]
        assert "person" not in item["email_masked"]


def test_lists_filter_by_state_email_reference_and_time(api: Api) -> None:
    reader = api.support_headers("read")
    api.account("known@example.com")
    with freeze_time(T0, real_asyncio=True) as clock:
        _request(api, "Known@Example.com")
        clock.tick(10)
        _request(api, "other@example.com")
        api.dispatch()
        clock.tick(10)
        _request(api, "third@example.com")

        def ids(**params: Any) -> list[str]:
            answer = api.client.get("/api/support/attempts", params=params, headers=reader)
            assert answer.status_code == 200, answer.text
            return [i["state"] + ":" + i["email_masked"] for i in answer.json()["items"]]

        assert ids(state="emailed") == ["emailed:k***n@e***e.com"]
        assert ids(state="unknown_account") == ["unknown_account:o***r@e***e.com"]
        assert ids(email="KNOWN@example.com") == ["emailed:k***n@e***e.com"]
        assert ids(since=(T0 + timedelta(seconds=5)).isoformat()) == [
            "requested:t***d@e***e.com",
            "unknown_account:o***r@e***e.com",
        ]
        assert ids(until=(T0 + timedelta(seconds=5)).isoformat()) == ["emailed:k***n@e***e.com"]
        newest = api.client.get("/api/support/attempts", headers=reader).json()["items"][0]
        assert newest["reference"] == support_reference(__import__("uuid").UUID(newest["id"]))
        by_ref = api.client.get(
            "/api/support/attempts",
            params={"reference": newest["reference"].lower()},
            headers=reader,
        ).json()["items"]
        assert [i["id"] for i in by_ref] == [newest["id"]]


def test_bad_filters_and_ids_are_400_or_404_in_the_error_shape(api: Api) -> None:
    reader = api.support_headers("read")
    writer = api.support_headers("write")
    for params in (
        {"state": "bogus"},
        {"email": "not an address"},
        {"email": "a@example.com,b@example.com"},
        {"reference": "nope"},
        {"limit": 0},
        {"limit": 201},
        {"limit": "many"},
        {"cursor": "garbage!"},
        {"cursor": "eyJhIjoxfQ"},
        {"since": "yesterday"},
    ):
        answer = api.client.get("/api/support/attempts", params=params, headers=reader)
        assert_error(answer, 400)
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(api.client.get(f"/api/support/attempts/{unknown}", headers=reader), 404)
    for bad in ("not-a-uuid", "1", "%0Aid"):
        assert_error(api.client.get(f"/api/support/attempts/{bad}", headers=reader), 400)
        assert_error(
            api.client.post(
                f"/api/support/attempts/{bad}/cancel", json={"reason": "r"}, headers=writer
            ),
            400,
        )
    _request(api, "a@example.com")
    [attempt] = api.attempts()
    base = f"/api/support/attempts/{attempt.id}"
    assert_error(api.client.get(f"{base}/diagram?format=gif", headers=reader), 400)
    for body in ({}, {"reason": ""}, {"reason": ["x"]}, {"reason": "x", "extra": 1}):
        assert_error(api.client.post(f"{base}/cancel", json=body, headers=writer), 400)
    assert_error(api.client.get("/api/support/audit?limit=0", headers=reader), 400)
    assert_error(api.client.get("/api/support/stats?since=tomorrow", headers=reader), 400)
    assert api.attempts()[0].state == "requested"


# -- one attempt ----------------------------------------------------------------------------------


def test_the_attempt_detail_has_the_fixed_shape_and_the_whole_timeline(api: Api) -> None:
    reader = api.support_headers("read")
    api.account()
    token = api.link_token(**{"User-Agent": "Mozilla/5.0 test"})
    api.client.post("/api/recovery/verify", json={"token": token})
    [attempt] = api.attempts()
    answer = api.client.get(f"/api/support/attempts/{attempt.id}", headers=reader)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == DETAIL_KEYS
    assert body["state"] == "link_opened"
    assert body["email_masked"] == "j***e@e***e.com"
    assert (body["locale"], body["client_ip"], body["user_agent"]) == (
        "en",
        "testclient",
        "Mozilla/5.0 test",
    )
    assert set(body["delivery"]) == {"status", "tries", "last_error", "sent_at"}
    assert body["delivery"]["status"] == "sent" and body["delivery"]["tries"] == 1
    events = [(e["seq"], e["event"], e["from"], e["to"], e["actor"]) for e in body["timeline"]]
    assert events == [
        (1, "start", None, "requested", "person"),
        (2, "dispatch", "requested", "emailed", "system"),
        (3, "open_link", "emailed", "link_opened", "person"),
    ]
    for entry in body["timeline"]:
        assert set(entry) == {"seq", "event", "from", "to", "actor", "at", "accepted", "detail"}
    assert body["allowed_events"] == [
        "open_link",
        "set_password",
        "expire",
        "cancel",
        "supersede",
        "enter_code",
    ]


def test_reading_an_overdue_attempt_applies_its_deadline(api: Api) -> None:
    reader = api.support_headers("read")
    api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        api.link_token()
        [attempt] = api.attempts()
        clock.tick(timedelta(minutes=60, seconds=1))
        answer = api.client.get(f"/api/support/attempts/{attempt.id}", headers=reader)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["state"] == "expired"
    assert body["timeline"][-1]["event"] == "expire"
    assert body["allowed_events"] == []


def test_the_attempt_diagram_highlights_its_state_and_path(api: Api) -> None:
    """Mermaid and DOT show the attempt's current state, the states it passed and its arrows."""
    reader = api.support_headers("read")
    api.account()
    api.link_token()
    [attempt] = api.attempts()
    answer = api.client.get(
        f"/api/support/attempts/{attempt.id}/diagram?format=mermaid", headers=reader
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "class emailed current" in answer.text
    assert "class requested visited" in answer.text
    assert "dispatch [mail_accepted] / keep_the_link (1)" in answer.text
    dot = api.client.get(f"/api/support/attempts/{attempt.id}/diagram?format=dot", headers=reader)
    assert dot.status_code == 200 and dot.text.startswith("digraph")


def test_the_attempt_diagram_is_drawn_as_svg_with_graphviz(api: Api) -> None:
    """With Graphviz installed, the attempt's diagram is also served as SVG (the default)."""
    require("graphviz")
    reader = api.support_headers("read")
    api.account()
    api.link_token()
    [attempt] = api.attempts()
    svg = api.client.get(f"/api/support/attempts/{attempt.id}/diagram", headers=reader)
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert b"<svg" in svg.content


def test_an_attempts_diagram_is_rendered_once_per_state_and_path(
    api: Api, graphviz_runs: Callable[[], int]
) -> None:
    """Asked again, the same attempt's SVG is the kept one; once the attempt moves, its
    diagram is another (rendered once more) and shows the new state."""
    reader = api.support_headers("read")
    api.account()
    token = api.link_token()
    [attempt] = api.attempts()
    url = f"/api/support/attempts/{attempt.id}/diagram?format=svg"
    first = [api.client.get(url, headers=reader) for _ in range(3)]
    assert {a.status_code for a in first} == {200} and len({a.content for a in first}) == 1
    assert graphviz_runs() == 1
    assert api.client.post("/api/recovery/verify", json={"token": token}).status_code == 200
    moved = api.client.get(url, headers=reader)
    assert moved.status_code == 200 and moved.content != first[0].content
    assert api.client.get(url, headers=reader).content == moved.content
    assert graphviz_runs() == 2


# -- actions ---------------------------------------------------------------------------------------


def test_support_cancel_kills_the_link_and_is_409_when_not_allowed(api: Api) -> None:
    writer = api.support_headers("write", name="bob")
    api.account()
    token = api.link_token()
    [attempt] = api.attempts()
    url = f"/api/support/attempts/{attempt.id}/cancel"
    answer = api.client.post(url, json={"reason": "caller asked on the phone"}, headers=writer)
    assert (answer.status_code, answer.json()) == (200, {"state": "cancelled"})
    assert_error(api.client.post("/api/recovery/verify", json={"token": token}), 410)
    again = api.client.post(url, json={"reason": "twice"}, headers=writer)
    error = assert_error(again, 409, "event_refused")
    assert error["details"] == [{"event": "cancel", "state": "cancelled", "reason": "wrong_state"}]
    timeline = api.services.engine.history_sync(attempt.id)
    cancel = next(e for e in timeline if e.event == "cancel" and e.accepted)
    assert cancel.actor == "support:bob"
    assert cancel.detail["reason"] == "caller asked on the phone"


def test_support_resend_starts_a_new_attempt_whose_email_supersedes_the_old_link(
    api: Api,
) -> None:
    writer = api.support_headers("write", name="carol")
    api.account(locale="fr")
    with freeze_time(T0, real_asyncio=True) as clock:
        first = api.link_token(**{"Accept-Language": "fr"})
        [old] = api.attempts()
        clock.tick(61)  # past the resend cooldown, as a person calling support would be
        answer = api.client.post(f"/api/support/attempts/{old.id}/resend", headers=writer)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        assert set(body) == {"attempt_id", "state", "reference", "resend_of"}
        assert body["state"] == "requested" and body["resend_of"] == str(old.id)
        api.dispatch()
        states = {str(a.id): (a.state, a.data["locale"], a.subject) for a in api.attempts()}
        assert states[str(old.id)][0] == "superseded"
        assert states[body["attempt_id"]] == ("emailed", "fr", "jane.doe@example.com")
        error = assert_error(api.client.post("/api/recovery/verify", json={"token": first}), 410)
        assert error["details"] == [{"reason": "superseded"}]
        second = api.tokens_sent()[-1]
        assert api.client.post("/api/recovery/verify", json={"token": second}).status_code == 200
    start = api.services.engine.history_sync(body["attempt_id"])[0]
    assert start.actor == "support:carol"


# -- audit, stats ---------------------------------------------------------------------------------


def test_support_requests_refused_before_their_handler_are_audited_with_the_keys_name(
    api: Api,
) -> None:
    """A read key on a write route (403) and a body that fails validation (400) are recorded."""
    reader = api.support_headers("read", name="reader-cy")
    writer = api.support_headers("write", name="writer-di")
    _request(api, "someone@example.com")
    [attempt] = api.attempts()
    cancel = f"/api/support/attempts/{attempt.id}/cancel"
    assert api.client.post(cancel, json={"reason": "x"}, headers=reader).status_code == 403
    assert api.client.post(cancel, json={"reason": 42}, headers=writer).status_code == 400
    assert api.client.post(cancel, json={"reason": "x"}).status_code == 401  # no key: no name
    items = api.client.get("/api/support/audit?limit=10", headers=reader).json()["items"]
    refused = [
        (i["key_name"], i["action"], i["target"], i["detail"]["method"], i["detail"]["outcome"])
        for i in items
        if i["action"] == "refused"
    ]
    assert refused == [
        ("writer-di", "refused", cancel, "POST", "invalid_input"),
        ("reader-cy", "refused", cancel, "POST", "forbidden"),
    ]
    assert api.attempts()[0].state == "requested"


def test_refusals_outside_the_handlers_work_are_audited_and_an_unknown_key_is_never_stored(
    api: Api,
) -> None:
    """A bad diagram format, a blank cancel reason, a path or method the API does not have
    (404, 405), and a key that is no key of ours (401: as "(unknown key)" with the
    client's address) each leave an audit row; the unknown key itself is stored nowhere."""
    reader = api.support_headers("read", name="reader-eve")
    writer = api.support_headers("write", name="writer-flo")
    _request(api, "someone@example.com")
    [attempt] = api.attempts()
    base = f"/api/support/attempts/{attempt.id}"
    made_up = "rsk_" + "Q" * 43
    stranger = {"Authorization": f"Bearer {made_up}"}
    assert api.client.get(f"{base}/diagram?format=gif", headers=reader).status_code == 400
    assert (
        api.client.post(f"{base}/cancel", json={"reason": "   "}, headers=writer).status_code == 400
    )
    assert api.client.get("/api/support/nope", headers=reader).status_code == 404
    assert api.client.delete("/api/support/attempts", headers=reader).status_code == 405
    assert api.client.get("/api/support/attempts", headers=stranger).status_code == 401
    assert api.client.get("/api/support/nope", headers=stranger).status_code == 404
    assert api.client.get("/api/support/attempts").status_code == 401  # no key: nothing to record
    with api.services.engine.db.transaction(write=False) as conn:
        audit_t = AuditEntry.__table__
        rows = [dict(r._mapping) for r in conn.execute(select(audit_t).order_by(audit_t.c.id))]
    seen = [(r["key_name"], r["action"], r["target"], r["detail"]) for r in rows]
    assert seen == [
        (
            "reader-eve",
            "view_diagram",
            str(attempt.id),
            {"format": "gif", "outcome": "invalid_input"},
        ),
        ("writer-flo", "cancel", str(attempt.id), {"reason": "", "outcome": "invalid_input"}),
        ("reader-eve", "refused", "/api/support/nope", {"method": "GET", "outcome": "not_found"}),
        (
            "reader-eve",
            "refused",
            "/api/support/attempts",
            {"method": "DELETE", "outcome": "method_not_allowed"},
        ),
        (
            "(unknown key)",
            "refused",
            "/api/support/attempts",
            {"method": "GET", "outcome": "unauthorized", "client_ip": "testclient"},
        ),
    ]
    assert made_up not in str(rows) and token_hash(made_up) not in str(rows)
    with pytest.raises(InvalidInput):
        api.services.support.create_key_sync("(unknown key)", "read")


def test_the_support_api_is_rate_limited_per_ip_so_unknown_keys_cannot_fill_the_audit_log(
    make_api: Callable[..., Api],
) -> None:
    """Each refused unknown key writes an audit row, so those requests count against the
    support API's per-IP budget like any other: past it, a 429 and no more rows."""
    api = make_api(support_rate_limit_per_minute=3)
    stranger = {"Authorization": "Bearer rsk_" + "Z" * 43}
    with freeze_time("2026-11-30 09:00:00", real_asyncio=True):
        statuses = [
            api.client.get(f"/api/support/attempts/{uuid}", headers=stranger).status_code
            for uuid in (
                "11111111-1111-1111-1111-111111111111",
                "22222222-2222-2222-2222-222222222222",
            )
            for _ in range(2)
        ]
    assert statuses == [401, 401, 401, 429]
    assert api.count(AuditEntry.__table__) == 3


def test_every_support_query_and_action_is_audited_with_the_keys_name(api: Api) -> None:
    reader = api.support_headers("read", name="reader-ann")
    writer = api.support_headers("write", name="writer-bo")
    _request(api, "someone@example.com")
    [attempt] = api.attempts()
    api.client.get("/api/support/attempts?state=requested", headers=reader)
    api.client.get(f"/api/support/attempts/{attempt.id}", headers=reader)
    unknown = "00000000-0000-4000-8000-000000000000"
    api.client.get(f"/api/support/attempts/{unknown}", headers=reader)
    api.client.get(f"/api/support/attempts/{attempt.id}/diagram?format=mermaid", headers=reader)
    api.client.get(f"/api/support/attempts/{unknown}/diagram?format=dot", headers=reader)
    api.client.post(
        f"/api/support/attempts/{attempt.id}/cancel", json={"reason": "fraud"}, headers=writer
    )
    api.client.post(
        f"/api/support/attempts/{attempt.id}/cancel", json={"reason": "again"}, headers=writer
    )
    resent = api.client.post(
        f"/api/support/attempts/{attempt.id}/resend",
        json={"override_reason": "the caller asked again"},
        headers=writer,
    )
    assert resent.status_code == 202, resent.text
    api.client.post(f"/api/support/attempts/{unknown}/resend", headers=writer)
    api.client.get("/api/support/stats", headers=reader)
    answer = api.client.get("/api/support/audit?limit=20", headers=reader)
    assert answer.status_code == 200
    items = answer.json()["items"]
    summary = [(i["key_name"], i["action"], i["detail"].get("outcome")) for i in items]
    assert summary == [
        ("reader-ann", "audit", "ok"),
        ("reader-ann", "stats", "ok"),
        ("writer-bo", "resend", "not_found"),
        ("writer-bo", "resend", "ok"),
        ("writer-bo", "cancel", "event_refused"),
        ("writer-bo", "cancel", "ok"),
        ("reader-ann", "view_diagram", "not_found"),
        ("reader-ann", "view_diagram", "ok"),
        ("reader-ann", "view_attempt", "not_found"),
        ("reader-ann", "view_attempt", "ok"),
        ("reader-ann", "list_attempts", "ok"),
    ]
    ident = str(attempt.id)
    targets = [i["target"] for i in items]
    assert targets == [
        None,
        None,
        unknown,
        ident,
        ident,
        ident,
        unknown,
        ident,
        unknown,
        ident,
        None,
    ]
    assert items[5]["detail"]["reason"] == "fraud"
    assert items[7]["detail"]["format"] == "mermaid"
    assert items[-1]["detail"]["state"] == "requested"


def test_the_audit_log_pages_by_keyset_cursor_like_every_other_list(api: Api) -> None:
    """`/api/support/audit` answers {"items", "next_cursor"}; following the cursors walks every
    entry once, newest first, and the last page's cursor is null."""
    reader = api.support_headers("read", name="reader-eve")
    for _ in range(5):
        api.client.get("/api/support/stats", headers=reader)
    first = api.client.get("/api/support/audit?limit=3", headers=reader)
    assert first.status_code == 200
    body = first.json()
    assert set(body) == {"items", "next_cursor"}
    seen = [i["id"] for i in body["items"]]
    cursor = body["next_cursor"]
    while cursor is not None:
        page = api.client.get(
            "/api/support/audit", params={"limit": 3, "cursor": cursor}, headers=reader
        ).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
    # 5 stats and the first page's own entry; later pages' own entries are newer than the cursor.
    assert len(seen) == len(set(seen)) == 6
    assert seen == sorted(seen, reverse=True)
    for bad in ("nonsense", "W1siMjAyNiJdXQ"):
        assert_error(
            api.client.get("/api/support/audit", params={"cursor": bad}, headers=reader), 400
        )


def test_stats_count_states_and_the_funnel_with_conversion_and_median_times(api: Api) -> None:
    reader = api.support_headers("read")
    for address in ("a@example.com", "b@example.com", "d@example.com"):
        api.account(address)
    with freeze_time(T0, real_asyncio=True) as clock:
        for address in ("a@example.com", "b@example.com", "c@example.com", "d@example.com"):
            _request(api, address)
        clock.tick(10)
        api.dispatch()  # a, b, d emailed after 10 s; c has no account
        tokens = {}
        for message, token in zip(api.messages(), api.tokens_sent(), strict=True):
            tokens[str(message["To"]).split("<")[-1].rstrip(">")] = token
        clock.tick(60)
        api.client.post("/api/recovery/verify", json={"token": tokens["a@example.com"]})
        clock.tick(60)
        api.client.post("/api/recovery/verify", json={"token": tokens["b@example.com"]})
        clock.tick(60)
        api.client.post("/api/recovery/password", json=_password(tokens["a@example.com"]))
        clock.tick(60)
        api.client.post("/api/login", json={"email": "a@example.com", "password": NEW_PASSWORD})
        answer = api.client.get(
            "/api/support/stats",
            params={
                "since": (T0 - timedelta(minutes=1)).isoformat(),
                "until": (T0 + timedelta(hours=1)).isoformat(),
            },
            headers=reader,
        )
    assert answer.status_code == 200, answer.text
    stats = answer.json()
    assert stats["total"] == 4
    assert stats["states"] == {
        "emailed": 1,
        "link_opened": 1,
        "logged_in": 1,
        "unknown_account": 1,
    }
    assert [
        (s["step"], s["count"], s["conversion"], s["median_seconds"]) for s in stats["funnel"]
    ] == [
        ("requested", 4, None, None),
        ("emailed", 3, 0.75, 10.0),
        ("link_opened", 2, 0.6667, 90.0),
        ("password_set", 1, 0.5, 120.0),
        ("logged_in", 1, 1.0, 60.0),
    ]


def test_support_never_sees_a_password_token_hash_or_link(api: Api) -> None:
    """Not while the link is live, not after the reset, not for a resend's new link."""
    reader = api.support_headers("read")
    writer = api.support_headers("write")
    api.account()
    token = api.link_token()
    [attempt] = api.attempts()

    def look(attempt_id: str) -> list[Any]:
        detail = api.client.get(f"/api/support/attempts/{attempt_id}", headers=reader)
        return [
            detail,
            api.client.get("/api/support/attempts", headers=reader),
            api.client.get(
                f"/api/support/attempts/{attempt_id}/diagram?format=dot", headers=reader
            ),
        ]

    answers = look(str(attempt.id))
    assert answers[0].json()["state"] == "emailed"
    api.client.post("/api/recovery/password", json=_password(token, "qwerty7"))
    api.client.post("/api/recovery/password", json=_password(token))
    session = api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": NEW_PASSWORD}
    ).json()["session_token"]
    with api.services.engine.db.transaction(write=False) as conn:
        hashes = conn.execute(select(Account.__table__.c.password_history)).scalar_one()
    answers += look(str(attempt.id))
    answers.append(api.client.get("/api/support/stats", headers=reader))
    resent = api.client.post(
        f"/api/support/attempts/{attempt.id}/resend",
        json={"override_reason": "the caller deleted the email"},
        headers=writer,
    )
    answers.append(resent)
    answers += look(resent.json()["attempt_id"])
    api.dispatch()
    second = api.tokens_sent()[-1]
    emailed = look(resent.json()["attempt_id"])
    assert emailed[0].json()["state"] == "emailed"
    answers += emailed
    answers.append(api.client.get("/api/support/audit", headers=reader))
    secrets_ = [
        token,
        token_hash(token),
        second,
        token_hash(second),
        NEW_PASSWORD,
        OLD_PASSWORD,
        "qwerty7",
        session,
        *hashes,
    ]
    for answer in answers:
        assert answer.status_code < 300, answer.text
        for secret in secrets_:
            assert secret not in answer.text
        assert "/recovery/reset" not in answer.text and "token=" not in answer.text
        assert "$argon2" not in answer.text


# The support API as SPEC §5 lists it: nothing more (no route sets a password or
# issues a token or a link).
SUPPORT_ROUTES = {
    ("get", "/api/support/attempts"),
    ("get", "/api/support/attempts/{attempt_id}"),
    ("get", "/api/support/attempts/{attempt_id}/diagram"),
    ("post", "/api/support/attempts/{attempt_id}/cancel"),
    ("post", "/api/support/attempts/{attempt_id}/events/{event}"),
    ("post", "/api/support/attempts/{attempt_id}/resend"),
    ("get", "/api/support/stats"),
    ("get", "/api/support/audit"),
}
SECRET_WORDS = ("password", "token", "link", "hash", "secret")


def test_the_support_api_has_only_the_spec_routes_and_none_takes_a_password_token_or_link(
    api: Api,
) -> None:
    document = api.client.get("/schema/openapi.json").json()
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        if path.startswith("/api/support")
        for method in operations
    }
    served = {
        (method.lower(), route.path_format)
        for route in api.app.routes
        if route.path.startswith("/api/support")
        for method in route.methods - {"OPTIONS", "HEAD"}
    }
    assert documented == served == SUPPORT_ROUTES
    schemas = document["components"]["schemas"]
    body_fields = {}
    for method, path in SUPPORT_ROUTES:
        operation = document["paths"][path][method]
        names = {p["name"].lower() for p in operation.get("parameters", [])}
        assert not [n for n in names if any(w in n for w in SECRET_WORDS)], (path, names)
        body = operation.get("requestBody")
        if body is not None:
            schema = body["content"]["application/json"]["schema"]
            # A body with examples is documented as allOf [its struct].
            parts = schema.get("oneOf") or schema.get("allOf") or [schema]
            refs = [s["$ref"] for s in parts if "$ref" in s]
            body_fields[path.rsplit("/", 1)[-1]] = {
                field
                for ref in refs
                for field in schemas[ref.rsplit("/", 1)[-1]].get("properties", {})
            }
    # Cancel and the events read only a reason; resend only its override (a reason, and the
    # newest email the caller saw): no route reads an address, a token or a password.
    assert {name: fields for name, fields in body_fields.items() if fields} == {
        "cancel": {"reason"},
        "{event}": {"reason"},
        "resend": {"override_reason", "expected_latest"},
    }


SMUGGLED = {
    "password": NEW_PASSWORD,
    "password_confirm": NEW_PASSWORD,
    "token": "T" * 43,
    "token_hash": "0" * 64,
    "link": "https://evil.example/recovery/reset?token=" + "T" * 43,
    "email": "attacker@evil.example",
}


def test_cancel_and_resend_refuse_a_password_token_link_or_address_and_change_nothing(
    api: Api,
) -> None:
    writer = api.support_headers("write", name="dave")
    api.account()
    token = api.link_token()
    [attempt] = api.attempts()
    audit_t = AuditEntry.__table__

    def snapshot() -> tuple[Any, ...]:
        with api.services.engine.db.transaction(write=False) as conn:
            account = tuple(conn.execute(select(Account.__table__)).one())
            audited = list(conn.execute(select(audit_t).order_by(audit_t.c.id)))
        events = [
            (e.seq, e.event, e.accepted) for e in api.services.engine.history_sync(attempt.id)
        ]
        return [(a.id, a.state) for a in api.attempts()], events, account, audited

    before = snapshot()
    base = f"/api/support/attempts/{attempt.id}"
    for field, value in SMUGGLED.items():
        cancel = api.client.post(
            f"{base}/cancel", json={"reason": "caller asked", field: value}, headers=writer
        )
        resend = api.client.post(f"{base}/resend", json={field: value}, headers=writer)
        for answer in (cancel, resend):
            assert_error(answer, 400, "invalid_input")
            assert value not in answer.text
    api.dispatch()
    states, events, account, audited = snapshot()
    assert (states, events, account) == before[:3]
    # The audit log may only have gained refusals.
    assert audited[: len(before[3])] == before[3]
    assert all(row.detail.get("outcome") != "ok" for row in audited[len(before[3]) :])
    [message] = api.messages()
    assert "evil.example" not in message.as_string()
    assert api.client.post("/api/recovery/verify", json={"token": token}).status_code == 200


def test_support_fires_the_events_the_flow_allows_with_a_reason_and_nothing_else(
    api: Api,
) -> None:
    """`POST .../events/{event}` fires what the attempt's flow lets support fire (listed in the
    detail's `support_events`), with a reason, audited; another event is a 400, an event its
    state does not allow now a 409, a read key a 403; none of them changes anything."""
    reader = api.support_headers("read", name="reader-fi")
    writer = api.support_headers("write", name="writer-fi")
    api.account()
    token = api.link_token()
    [attempt] = api.attempts()
    base = f"/api/support/attempts/{attempt.id}"
    detail = api.client.get(base, headers=reader).json()
    assert detail["support_events"] == ["cancel"]
    assert "dispatch" in detail["allowed_events"] or "open_link" in detail["allowed_events"]
    for event in ("dispatch", "open_link", "set_password", "nonsense"):
        refused = api.client.post(f"{base}/events/{event}", json={"reason": "r"}, headers=writer)
        assert_error(refused, 400, "invalid_input")
    assert_error(
        api.client.post(f"{base}/events/cancel", json={"reason": " "}, headers=writer), 400
    )
    assert (
        api.client.post(f"{base}/events/cancel", json={"reason": "r"}, headers=reader).status_code
        == 403
    )
    assert api.attempts()[0].state == "emailed"
    done = api.client.post(f"{base}/events/cancel", json={"reason": "caller asked"}, headers=writer)
    assert (done.status_code, done.json()) == (200, {"state": "cancelled"})
    again = api.client.post(f"{base}/events/cancel", json={"reason": "twice"}, headers=writer)
    assert_error(again, 409, "event_refused")
    assert api.client.get(base, headers=reader).json()["support_events"] == []
    assert_error(
        api.client.post("/api/recovery/verify", json={"token": token}), 410, "link_cancelled"
    )
    last = [e for e in api.services.engine.history_sync(attempt.id) if e.accepted][-1]
    assert (last.event, last.actor, last.detail) == (
        "cancel",
        "support:writer-fi",
        {"reason": "caller asked", "via": "support"},
    )
