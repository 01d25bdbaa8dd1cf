"""Signed webhooks end to end, on SQLite and PostgreSQL, with a real receiver on loopback that
checks every signature with the `standardwebhooks` library: registering (the secret shown
once, private addresses refused), the events of a reset, a receiver that is down for a
while, a delivery dead-lettered and replayed, and a slow receiver that slows nobody.

Time moves with freezegun (`real_asyncio=True`, so the worker's own waits still run).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from tests.api import cases
from tests.api.conftest import NEW_PASSWORD, OLD_PASSWORD, Api, assert_error
from tests.support.webhooks import WebhookReceiver

HOOKS = "/api/admin/webhooks"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RESET_EVENTS = ["password.changed", "sessions.revoked", "recovery.completed"]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    found = WebhookReceiver()
    yield found
    found.stop()


@pytest.fixture
def hooked(make_api: Callable[..., Api]) -> Api:
    """The application, with webhooks allowed to reach loopback (the test's receiver)."""
    return make_api(webhooks_allow_private=True, public_rate_limit_per_minute=1000)


def admin(api: Api) -> dict[str, str]:
    if not hasattr(api, "admin_headers"):
        api.admin_headers = api.support_headers("admin", name="app")  # type: ignore[attr-defined]
    return api.admin_headers  # type: ignore[attr-defined,no-any-return]


def register(api: Api, receiver: WebhookReceiver, events: list[str]) -> str:
    answer = api.client.post(
        HOOKS, json={"url": receiver.url, "events": events}, headers=admin(api)
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"id", "secret"} and body["secret"].startswith("whsec_")
    receiver.secret = body["secret"]
    return str(body["id"])


def deliveries(api: Api, endpoint: str, **params: Any) -> list[dict[str, Any]]:
    answer = api.client.get(f"{HOOKS}/{endpoint}/deliveries", params=params, headers=admin(api))
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


def reset(api: Api, address: str = "jane.doe@example.com") -> None:
    """A whole reset over HTTP: ask, open the link, set a new password."""
    token = api.link_token(address)
    assert api.client.post("/api/recovery/verify", json={"token": token}).status_code == 200
    answer = api.client.post(
        "/api/recovery/password",
        json={"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert answer.status_code == 200, answer.text


def test_registering_shows_the_secret_once_and_refuses_private_addresses(
    api: Api, receiver: WebhookReceiver
) -> None:
    """Without RECOVERY_WEBHOOKS_ALLOW_PRIVATE, loopback, private, link-local and
    unspecified destinations are refused (and names resolving to them); the secret is in
    the 201 answer only, never in the list or the detail."""
    headers = admin(api)
    for url in (
        receiver.url,
        "http://localhost:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ):
        answer = api.client.post(
            HOOKS, json={"url": url, "events": ["password.changed"]}, headers=headers
        )
        assert_error(answer, 400, "webhook_url_refused")
    for url in ("ftp://example.com/x", "example.com/hook", "http:///x", "javascript:alert(1)"):
        answer = api.client.post(
            HOOKS, json={"url": url, "events": ["password.changed"]}, headers=headers
        )
        assert_error(answer, 400, "webhook_url_refused")
    unknown = api.client.post(
        HOOKS, json={"url": "https://hooks.example.com/x", "events": ["nope"]}, headers=headers
    )
    assert_error(unknown, 400, "invalid_input")
    assert api.client.get(HOOKS, headers=headers).json()["items"] == []
    assert_error(
        api.client.post(HOOKS, json={"url": receiver.url, "events": ["password.changed"]}),
        401,
    )
    writer = api.support_headers("write", name="writer")
    assert_error(api.client.get(HOOKS, headers=writer), 403)


def test_a_reset_sends_signed_password_changed_and_sessions_revoked_then_recovery_completed(
    hooked: Api, receiver: WebhookReceiver
) -> None:
    """A person with an open session resets their password: after the worker's pass the
    receiver has `password.changed` and `sessions.revoked`, each verified with the
    `standardwebhooks` library, carrying ids and times and no secret; the sign-in with the
    new password then sends `recovery.completed`. Every delivery is visible: delivered,
    one try, the receiver's answer."""
    receiver.start()
    api = hooked
    endpoint = register(api, receiver, RESET_EVENTS)
    listed = api.client.get(HOOKS, headers=admin(api)).json()
    assert receiver.secret not in str(listed)
    assert listed["items"][0]["events"] == RESET_EVENTS
    assert set(RESET_EVENTS) <= set(listed["event_types"])
    account = api.account()
    session = api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
    ).json()["session_token"]
    reset(api)
    assert receiver.received == []  # nothing leaves before the worker runs
    api.dispatch()
    assert sorted(receiver.types()) == ["password.changed", "sessions.revoked"]
    assert all(r.verified for r in receiver.received)
    by_type = {r.type: r for r in receiver.received}
    changed = by_type["password.changed"].payload
    revoked = by_type["sessions.revoked"].payload
    assert changed is not None and revoked is not None
    assert changed["data"]["account_id"] == str(account.id)
    assert set(changed["data"]) == {"account_id", "attempt_id", "flow", "changed_at"}
    assert revoked["data"] == {
        "account_id": str(account.id),
        "sessions": 1,
        "reason": "password_changed",
        "revoked_at": revoked["data"]["revoked_at"],
    }
    assert changed["timestamp"] == changed["data"]["changed_at"]
    for item in receiver.received:
        text = item.body.decode()
        for secret in (receiver.secret, NEW_PASSWORD, OLD_PASSWORD, session, "$argon2"):
            assert secret not in text
        assert item.headers["webhook-id"].startswith("msg_")
        assert item.headers["webhook-signature"].startswith("v1,")
    login = api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": NEW_PASSWORD}
    )
    assert login.status_code == 200
    api.dispatch()
    assert receiver.types()[-1] == "recovery.completed"
    completed = receiver.received[-1].payload
    assert completed is not None and completed["data"]["account_id"] == str(account.id)
    assert all(r.verified for r in receiver.received)
    seen = deliveries(api, endpoint)
    assert [d["status"] for d in seen] == ["delivered"] * 3
    assert all(d["tries"] == 1 and d["last_answer"] == {"status": 204, "body": ""} for d in seen)
    one = api.client.get(f"{HOOKS}/{endpoint}/deliveries/{seen[0]['id']}", headers=admin(api))
    assert one.json()["body"]["type"] == "recovery.completed"


def test_a_receiver_down_for_a_while_gets_the_event_once_it_is_back(
    hooked: Api, receiver: WebhookReceiver
) -> None:
    """With the receiver down, each try fails and is retried later (not before its time);
    once it is back, the next try delivers, verified, with the same webhook-id."""
    api = hooked
    endpoint = register(api, receiver, ["account.disabled"])
    account = api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        api.client.patch(
            f"/api/admin/accounts/{account.id}", json={"disabled": True}, headers=admin(api)
        )
        api.dispatch()
        [first] = deliveries(api, endpoint)
        assert (first["status"], first["tries"]) == ("retrying", 1)
        assert first["last_answer"]["status"] is None
        assert "could not connect" in first["last_answer"]["body"]
        retry_at = datetime.fromisoformat(first["next_try_at"])
        assert retry_at == T0 + timedelta(seconds=10)
        clock.move_to(retry_at - timedelta(seconds=1))
        api.dispatch()
        assert deliveries(api, endpoint)[0]["tries"] == 1  # not due yet
        clock.move_to(retry_at)
        api.dispatch()
        second = deliveries(api, endpoint)[0]
        assert (second["status"], second["tries"]) == ("retrying", 2)
        assert datetime.fromisoformat(second["next_try_at"]) == retry_at + timedelta(seconds=20)
        receiver.start()
        clock.move_to(datetime.fromisoformat(second["next_try_at"]))
        api.dispatch()
    [done] = deliveries(api, endpoint)
    assert (done["status"], done["tries"]) == ("delivered", 3)
    [got] = receiver.received
    assert got.verified and got.type == "account.disabled"
    assert got.headers["webhook-id"] == f"msg_{done['event_id'].replace('-', '')}"


def test_a_delivery_past_its_day_is_dead_lettered_and_a_replay_delivers_it(
    hooked: Api, receiver: WebhookReceiver
) -> None:
    """Retried with growing delays for a day, then `dead`; a replay through the admin API
    sends the same event again (a new day of tries) and it is delivered, verified; a
    delivery still queued cannot be replayed (409)."""
    api = hooked
    endpoint = register(api, receiver, ["account.disabled", "account.enabled"])
    account = api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        api.client.patch(
            f"/api/admin/accounts/{account.id}", json={"disabled": True}, headers=admin(api)
        )
        api.dispatch()
        [queued] = deliveries(api, endpoint)
        replay = f"{HOOKS}/{endpoint}/deliveries/{queued['id']}/replay"
        assert_error(api.client.post(replay, headers=admin(api)), 409, "delivery_queued")
        gaps = []
        while deliveries(api, endpoint)[0]["status"] == "retrying":
            current = deliveries(api, endpoint)[0]
            due = datetime.fromisoformat(current["next_try_at"])
            gaps.append(due - datetime.fromisoformat(current["last_tried_at"]))
            clock.move_to(due)
            api.dispatch()
        dead = deliveries(api, endpoint)[0]
        assert dead["status"] == "dead"
        assert datetime.fromisoformat(dead["last_tried_at"]) <= T0 + timedelta(hours=24)
        assert gaps == sorted(gaps) and gaps[-1] == timedelta(hours=1)
        assert dead["tries"] == len(gaps) + 1
        assert deliveries(api, endpoint, status="dead")[0]["id"] == dead["id"]
        assert receiver.received == []

        receiver.start()
        clock.tick(timedelta(hours=2))
        replayed = api.client.post(replay, headers=admin(api))
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["status"] == "pending"
        api.dispatch()
    [done] = deliveries(api, endpoint, status="delivered")
    assert done["id"] == dead["id"] and done["tries"] == dead["tries"] + 1
    [got] = receiver.received
    assert got.verified and got.type == "account.disabled"
    assert got.headers["webhook-id"] == f"msg_{done['event_id'].replace('-', '')}"


def test_a_slow_receiver_never_holds_up_a_persons_request(
    hooked: Api, receiver: WebhookReceiver
) -> None:
    """While the worker is stuck waiting on a receiver that does not answer, the person's
    requests are answered: the reset and a sign-in complete with the delivery still in
    flight at the receiver."""
    api = hooked
    receiver.start()
    register(api, receiver, ["password.changed", "sessions.revoked", "recovery.completed"])
    api.account()
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    worker = threading.Thread(
        target=loop.run_until_complete, args=(api.services.worker.run_forever(stop),), daemon=True
    )
    with receiver.hold() as release:
        worker.start()
        try:
            reset(api)
            deadline = datetime.now(UTC) + timedelta(seconds=20)
            while receiver.in_flight == 0 and datetime.now(UTC) < deadline:
                threading.Event().wait(0.05)
            assert receiver.in_flight >= 1  # the worker is stuck at the receiver
            login = api.client.post(
                "/api/login", json={"email": "jane.doe@example.com", "password": NEW_PASSWORD}
            )
            assert login.status_code == 200
            assert receiver.in_flight >= 1 and receiver.received == []
            release.set()
        finally:
            loop.call_soon_threadsafe(stop.set)
            worker.join(30)
    assert receiver.received  # the held deliveries arrived once released


def test_a_support_handled_recovery_tells_the_applications_of_both_changes(
    hooked: Api, receiver: WebhookReceiver
) -> None:
    """An approved "I can't access this email" case ends in a new password at a new
    address: the receiver gets `password.changed` and `account.email_changed` for the
    account, then `recovery.completed` once the person signs in at the new address, each
    naming the flow and verified with `standardwebhooks`."""
    receiver.start()
    api = hooked
    register(api, receiver, [*RESET_EVENTS, "account.email_changed"])
    account = api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = cases.confirmed_case(api)
        assert cases.fire(api, case_id, "approve").status_code == 200
        cases.drain(api)
        clock.tick(timedelta(minutes=api.services.settings.assisted_wait_minutes, seconds=1))
        cases.drain(api)
        grant = cases.mail_to(cases.messages(api), cases.CONTACT)[-1]
        token = cases.token_in(grant, cases.GRANT_LINK)
        assert api.client.post("/api/recovery/verify", json={"token": token}).status_code == 200
        answer = api.client.post(
            "/api/recovery/password",
            json={"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
        )
        assert answer.status_code == 200, answer.text
        api.dispatch()
        assert sorted(receiver.types()) == ["account.email_changed", "password.changed"]
        login = api.client.post(
            "/api/login", json={"email": cases.CONTACT, "password": NEW_PASSWORD}
        )
        assert login.status_code == 200
        api.dispatch()
    assert receiver.types()[-1] == "recovery.completed"
    assert all(r.verified for r in receiver.received)
    for item in receiver.received:
        assert item.payload is not None
        assert item.payload["data"]["account_id"] == str(account.id)
        assert item.payload["data"]["flow"] == "assisted_recovery"
        assert cases.STATEMENT not in item.body.decode()
