"""The support console through its forms (Litestar's TestClient, SQLite and PostgreSQL).

Agents sign in with a password and, for `write`, a TOTP code; the session cookie
is HttpOnly, SameSite=Strict, scoped to /support and ends when idle; every form
needs the CSRF token; the sign-in slows down like the public one. Then each screen:
find (an address, a reference as read out, an id), an attempt (diagram, timeline,
delivery, client, related journeys, events with a reason and a confirmation,
resend), accounts (clear the slow-down, revoke a session), stats, audit, keys; a
read agent sees no action and gets 403 on a post, audited. The browser suite
(`tests/browser/test_console.py`) walks the same screens in Chromium.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from babel.messages.pofile import read_po
from freezegun import freeze_time
from jinja2.ext import babel_extract
from litestar.testing import TestClient
from sqlalchemy import select

from api.accounts.models import LoginFailure
from api.i18n import LOCALE_DIR, translations
from api.support.models import AuditEntry, SupportAgentSession
from api.support.reference import support_reference
from api.web.console import Room
from api.web.pages import TEMPLATE_DIR
from flows import password_recovery
from tests.api.cases import (
    CONTACT,
    STATEMENT,
    confirmed_case,
    drain,
    fire,
    mail_to,
    submit,
    text_of,
)
from tests.api.conftest import OLD_PASSWORD, Api
from tests.api.test_pages import Doc, doc

BASE = "http://testserver.local"
AGENT_PASSWORD = "Quartz!Lantern-7401-Mosaic"
T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


@dataclass
class Desk:
    """One agent at the console: their own browser-like client and second-factor seed."""

    api: Api
    client: TestClient[Any]
    email: str
    role: str
    secret: str | None
    clock: Any = None
    signed: bool = False
    pages: list[Doc] = field(default_factory=list)

    def csrf(self, path: str) -> str:
        answer = self.client.get(path)
        found = CSRF.search(answer.text)
        assert found, f"no CSRF field on {path}: {answer.status_code}"
        return found.group(1)

    def post(self, path: str, data: dict[str, str], *, form: str | None = None) -> Any:
        token = self.csrf(form or path)
        return self.client.post(path, data={**data, "_csrf_token": token})

    def code(self) -> str:
        assert self.secret is not None
        now = self.api.services.engine.clock.now()
        return pyotp.TOTP(self.secret).at(now)

    def sign_in(self, password: str = AGENT_PASSWORD) -> Any:
        answer = self.post("/support/login", {"email": self.email, "password": password})
        if self.secret is not None and str(answer.url).endswith("/support/login/code"):
            answer = self.post("/support/login/code", {"code": self.code()})
        self.signed = str(answer.url).endswith("/support/attempts")
        return answer

    def get(self, path: str, **params: str) -> Doc:
        answer = self.client.get(path, params=params)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:2000])
        return doc(answer)


@pytest.fixture
def console_api(make_api: Callable[..., Api]) -> Api:
    """The application served at the test client's own http address (cookies flow back)."""
    return make_api(public_base_url=BASE)


def browser(api: Api, base_url: str = BASE, **kwargs: Any) -> TestClient[Any]:
    """Another browser on an application whose own client already runs its lifespan: it is
    not entered, so the application's startup and shutdown hooks run once."""
    return TestClient(api.app, base_url=base_url, **kwargs)


def room(api: Api) -> Room:
    found: Room = api.app.state["console"]
    return found


@pytest.fixture
def desk(console_api: Api) -> Callable[..., Desk]:
    """A new agent (made as `recovery support-agent create` does) and their client."""
    count = iter(range(1, 1000))

    def make(role: str = "write", *, second_factor: bool = False, sign_in: bool = True) -> Desk:
        email = f"agent{next(count)}-{role}@support.example.com"
        created = room(console_api).agents.create_sync(
            email=email,
            name=f"Agent {role.title()}",
            role=role,
            password=AGENT_PASSWORD,
            second_factor=second_factor,
            time_zone="Europe/Paris",
        )
        client = browser(console_api)
        agent = Desk(console_api, client, email, role, created.totp_secret)
        if sign_in:
            agent.sign_in()
            assert agent.signed
        return agent

    return make


def request_link(api: Api, address: str = "jane.doe@example.com", **data: Any) -> Any:
    """A "Forgot password?" as a person's page makes it, then the worker's pass."""
    attempt = asyncio.run(
        password_recovery.request(
            api.services,
            address,
            locale="en",
            client_ip="198.51.100.7",
            user_agent="Mozilla/5.0 (test)",
        )
    )
    api.dispatch()
    return api.services.engine.get_sync(attempt.id)


def tags(node: Any, tag: str) -> list[Any]:
    """The elements called `tag` inside a parsed element, itself included."""
    return [n for n in node.walk() if n.tag == tag]


def body_rows(node: Any) -> list[Any]:
    """The rows of a table's body."""
    return tags(tags(node, "tbody")[0], "tr")


def audit(api: Api) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    with api.services.engine.db.transaction(write=False) as conn:
        rows = conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.__table__.c.id))
        return [(r.key_name, r.action, r.target, dict(r.detail)) for r in rows]


# -- signing in ------------------------------------------------------------------------------


def test_a_write_agent_signs_in_with_the_password_then_a_totp_code(
    desk: Callable[..., Desk],
) -> None:
    agent = desk("write", sign_in=False)
    assert agent.secret is not None  # every write agent has a second factor
    first = agent.post("/support/login", {"email": agent.email, "password": AGENT_PASSWORD})
    assert str(first.url).endswith("/support/login/code")
    # The half-open session opens nothing but the code form.
    assert str(agent.client.get("/support/attempts").url).endswith("/support/login")
    page = agent.post("/support/login/code", {"code": agent.code()})
    assert str(page.url).endswith("/support/attempts")
    assert doc(page).by_id("agent-name").text == "Agent Write"
    who = [(*row[:2], row[3]["outcome"]) for row in audit(agent.api) if row[1] == "sign_in"]
    assert who == [(f"agent:{agent.email}", "sign_in", "ok")]


def test_a_totp_code_works_once_and_a_wrong_one_is_refused(desk: Callable[..., Desk]) -> None:
    agent = desk("write", sign_in=False)
    with freeze_time(T0, real_asyncio=True):
        agent.post("/support/login", {"email": agent.email, "password": AGENT_PASSWORD})
        wrong = agent.post("/support/login/code", {"code": "000000"})
        assert wrong.status_code == 401
        assert doc(wrong).has_id("error-summary")
        code = agent.code()
        assert str(agent.post("/support/login/code", {"code": code}).url).endswith("/attempts")
        # The same code again, in a second browser, is refused: it was used.
        other = Desk(agent.api, browser(agent.api), agent.email, "write", None)
        other.post("/support/login", {"email": agent.email, "password": AGENT_PASSWORD})
        assert other.post("/support/login/code", {"code": code}).status_code == 401


def test_a_read_agent_without_a_second_factor_signs_in_with_the_password_alone(
    desk: Callable[..., Desk],
) -> None:
    agent = desk("read", sign_in=False)
    assert agent.secret is None
    answer = agent.post("/support/login", {"email": agent.email, "password": AGENT_PASSWORD})
    assert str(answer.url).endswith("/support/attempts")


def test_a_wrong_password_and_an_unknown_agent_get_one_answer_and_the_sign_in_slows_down(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    agent = desk("read", sign_in=False)
    free = console_api.settings.login_free_failures
    with freeze_time(T0, real_asyncio=True):
        wrong = agent.post("/support/login", {"email": agent.email, "password": "nope"})
        unknown = agent.post("/support/login", {"email": "who@example.com", "password": "nope"})
        assert wrong.status_code == unknown.status_code == 401
        assert doc(wrong).by_id("error-summary").text == doc(unknown).by_id("error-summary").text
        for _ in range(free - 1):
            agent.post("/support/login", {"email": agent.email, "password": "nope"})
        slowed = agent.post("/support/login", {"email": agent.email, "password": AGENT_PASSWORD})
        assert slowed.status_code == 429
        assert int(slowed.headers["retry-after"]) >= 1
    # Counted under the console's own key, never the address of an account.
    with console_api.services.engine.db.transaction(write=False) as conn:
        keys = set(conn.execute(select(LoginFailure.__table__.c.key)).scalars())
    assert keys == {f"support-agent:{agent.email}", "support-agent:who@example.com"}


def test_the_session_cookie_is_httponly_samesite_strict_and_scoped_to_the_console(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(public_base_url="https://accounts.example.test")
    room(api).agents.create_sync(
        email="reader@support.example.com", name="Reader", role="read", password=AGENT_PASSWORD
    )
    client = browser(api, base_url="https://testserver.local")
    form = client.get("/support/login")
    token = CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/support/login",
        data={
            "email": "reader@support.example.com",
            "password": AGENT_PASSWORD,
            "_csrf_token": token,
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("support_session=")
    )
    parts = {p.strip().split("=")[0].lower(): p.strip() for p in cookie.split(";")}
    assert "httponly" in parts and "secure" in parts
    assert parts["samesite"].lower() == "samesite=strict"
    assert parts["path"] == "Path=/support"
    assert answer.headers["cache-control"] == "no-store"


def test_a_session_idle_for_the_timeout_still_works_at_the_edge_and_not_one_second_after(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    idle = timedelta(minutes=console_api.settings.support_session_idle_minutes)
    with freeze_time(T0, real_asyncio=True) as clock:
        agent = desk("read")
        clock.tick(idle)
        assert str(agent.client.get("/support/stats").url).endswith("/support/stats")
        # That request restarted the idle clock: idle again, one second past it.
        clock.tick(idle + timedelta(seconds=1))
        assert str(agent.client.get("/support/stats").url).endswith("/support/login")


def test_signing_out_ends_the_session(desk: Callable[..., Desk]) -> None:
    agent = desk("read")
    cookie = agent.client.cookies.get("support_session")
    agent.post("/support/logout", {}, form="/support/attempts")
    thief = browser(agent.api, cookies={"support_session": cookie})
    assert str(thief.get("/support/attempts").url).endswith("/support/login")
    with agent.api.services.engine.db.transaction(write=False) as conn:
        revoked = conn.execute(select(SupportAgentSession.__table__.c.revoked_at)).scalars().all()
    assert all(r is not None for r in revoked)


def test_a_form_without_the_csrf_token_is_refused_and_changes_nothing(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    agent = desk("write")
    url = f"/support/attempts/{attempt.id}/events/cancel"
    refused = agent.client.post(url, data={"reason": "fraud", "confirm": "yes"})
    forged = agent.client.post(
        url, data={"reason": "fraud", "confirm": "yes", "_csrf_token": "0" * 64}
    )
    for answer in (refused, forged):
        assert answer.status_code == 403
        assert "expired" in doc(answer).by_id("error-text").text
    assert console_api.services.engine.get_sync(attempt.id).state == "emailed"


# -- find ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        lambda r: r,
        lambda r: r.lower(),
        lambda r: r.replace("-", " "),
        lambda r: " ".join(r.replace("-", "")),
        lambda r: r.replace("O", "0").replace("I", "1").replace("B", "8"),
    ],
    ids=["as-shown", "lower-case", "spaces", "spelled-out", "look-alike-digits"],
)
def test_find_takes_a_reference_as_a_person_reads_it_out(
    console_api: Api, desk: Callable[..., Desk], typed: Callable[[str], str]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    request_link(console_api, "someone.else@example.com")
    reference = support_reference(attempt.id)
    page = desk("read").get("/support/attempts", q=typed(reference))
    links = [
        n.attrs["href"] for n in page.all("a") if "/support/attempts/" in n.attrs.get("href", "")
    ]
    assert links == [f"/support/attempts/{attempt.id}"]


def test_find_takes_an_exact_address_filters_and_an_attempt_id(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    mine = request_link(console_api)
    request_link(console_api, "other@example.com")
    agent = desk("read")
    by_address = agent.get("/support/attempts", q="Jane.Doe@Example.com")
    rows = body_rows(by_address.root)
    assert len(rows) == 1 and "j***e@e***e.com" in rows[0].text
    filtered = agent.get("/support/attempts", state="unknown_account")
    assert "o***r@e***e.com" in filtered.html and "j***e@" not in filtered.html
    direct = agent.client.get("/support/attempts", params={"q": str(mine.id)})
    assert str(direct.url).endswith(f"/support/attempts/{mine.id}")
    bad = agent.client.get("/support/attempts", params={"q": "not a thing"})
    assert bad.status_code == 400 and doc(bad).has_id("error-summary")


def test_find_reads_times_in_the_agents_zone_and_shows_both_forms(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    with freeze_time(T0, real_asyncio=True):
        request_link(console_api)
        agent = desk("read")  # Europe/Paris: UTC+1 in November
        # 10:00 in Paris is 09:00 UTC: the attempt made at 09:00 UTC is "from" it.
        page = agent.get("/support/attempts", since="2026-11-30T10:00")
        assert "2026-11-30 10:00:00" in page.html
        assert "(now)" in page.html or "0 seconds" in page.html
        later = agent.get("/support/attempts", since="2026-11-30T10:01")
        assert later.has_id("no-results")


# -- one attempt ---------------------------------------------------------------------------------


def test_an_attempt_page_tells_its_story(console_api: Api, desk: Callable[..., Desk]) -> None:
    console_api.account()
    attempt = request_link(console_api)
    token = console_api.tokens_sent()[-1]
    asyncio.run(password_recovery.open_link(console_api.services, token, method="HEAD"))
    page = desk("read").get(f"/support/attempts/{attempt.id}")
    assert page.by_id("attempt-reference").text == support_reference(attempt.id)
    assert page.by_id("attempt-state").text == "link_opened"
    assert _current_section(page) == "/support/attempts"
    timeline = page.by_id("timeline").text
    assert "Started by the person." in timeline
    assert "The email with the link was accepted by the mail server." in timeline
    assert "The link was opened." in timeline
    assert page.has_id("automated-3")  # the HEAD open is flagged
    assert page.by_id("client-ip").text == "198.51.100.7"
    assert page.by_id("user-agent").text == "Mozilla/5.0 (test)"
    delivery = page.by_id("delivery").text
    assert "sent" in delivery and "Tries" in delivery
    svgs = [n for n in page.all("svg") if "diagram" in n.attrs.get("class", "")]
    if svgs:  # Graphviz is installed: the diagram is inline, labelled by its caption
        assert svgs[0].attrs["role"] == "img"
        assert svgs[0].attrs["aria-labelledby"] == "diagram-title"
    caption = page.by_id("diagram-title").text
    assert "requested → emailed → link_opened" in caption


def test_a_refused_event_is_told_apart_from_an_accepted_one(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    token = console_api.tokens_sent()[-1]
    with pytest.raises(Exception):  # noqa: B017  (the policy refuses a weak password)
        asyncio.run(
            password_recovery.set_password(console_api.services, token, "weak", "weak", locale="en")
        )
    page = desk("read").get(f"/support/attempts/{attempt.id}")
    refused = [n for n in tags(page.by_id("timeline"), "li") if "refused" in n.attrs["class"]]
    assert len(refused) == 1
    assert "Refused: set_password by the person" in refused[0].text
    assert "too_short" in refused[0].text


def test_related_journeys_of_the_same_address_are_listed(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        first = request_link(console_api)
        clock.tick(120)
        second = request_link(console_api)
        page = desk("read").get(f"/support/attempts/{first.id}")
    related = page.all("section")[-1]
    assert support_reference(second.id) in related.text
    assert support_reference(first.id) not in related.text


def test_cancel_asks_a_reason_and_a_confirmation_then_fires_through_the_service(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    agent = desk("write")
    page = agent.get(f"/support/attempts/{attempt.id}")
    assert (
        page.by_id("event-cancel").attrs["href"] == f"/support/attempts/{attempt.id}/events/cancel"
    )
    url = f"/support/attempts/{attempt.id}/events/cancel"
    no_reason = agent.post(url, {"reason": " ", "confirm": "yes"})
    unconfirmed = agent.post(url, {"reason": "caller asked"})
    assert no_reason.status_code == unconfirmed.status_code == 400
    assert console_api.services.engine.get_sync(attempt.id).state == "emailed"
    done = agent.post(url, {"reason": "caller asked", "confirm": "yes"})
    assert str(done.url).endswith("?notice=fired")
    assert doc(done).by_id("attempt-state").text == "cancelled"
    cancel = console_api.services.engine.history_sync(attempt.id)[-1]
    assert (cancel.event, cancel.actor) == ("cancel", f"support:agent:{agent.email}")
    assert cancel.detail["reason"] == "caller asked"
    assert "Reason: caller asked" in doc(done).by_id("timeline").text


def test_a_read_agent_sees_no_action_and_gets_403_when_posting_anyway(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    writer = desk("write")
    reader = desk("read")
    page = reader.get(f"/support/attempts/{attempt.id}")
    assert page.has_id("read-only")
    assert not page.all("button") or all(
        b.attrs.get("id") == "sign-out" for b in page.all("button")
    )
    assert not page.has_id("event-cancel")
    account_id = str(console_api.services.accounts.by_address_sync("jane.doe@example.com").id)  # type: ignore[union-attr]
    token = reader.csrf("/support/attempts")
    posts = {
        f"/support/attempts/{attempt.id}/events/cancel": {"reason": "x", "confirm": "yes"},
        f"/support/attempts/{attempt.id}/resend": {},
        f"/support/accounts/{account_id}/clear-slow-down": {},
        f"/support/accounts/{account_id}/sessions/revoke": {"session": "abc"},
        "/support/keys/revoke": {"name": "x"},
    }
    for path, data in posts.items():
        answer = reader.client.post(path, data={**data, "_csrf_token": token})
        assert answer.status_code == 403, path
        assert "only read" in doc(answer).by_id("error-text").text
    assert reader.client.get(f"/support/attempts/{attempt.id}/events/cancel").status_code == 403
    assert console_api.services.engine.get_sync(attempt.id).state == "emailed"
    refusals = [r for r in audit(console_api) if r[1] == "refused"]
    assert {r[0] for r in refusals} == {f"agent:{reader.email}"}
    assert len(refusals) == len(posts) + 1
    del writer


# -- resend ---------------------------------------------------------------------------------------


def test_resend_inside_the_cooldown_is_refused_with_the_time_it_becomes_possible(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    cooldown = console_api.settings.resend_cooldown_seconds
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt = request_link(console_api)
        agent = desk("write")
        clock.tick(cooldown - 1)
        page = agent.get(f"/support/attempts/{attempt.id}")
        assert "2026-11-30 10:01:00" in page.by_id("resend-blocked").text  # Paris time
        page_url = f"/support/attempts/{attempt.id}"
        refused = agent.post(f"{page_url}/resend", {}, form=page_url)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        clock.tick(1)  # exactly at the end of the cooldown
        sent = agent.post(f"{page_url}/resend", {}, form=page_url)
        assert "notice=resent" in str(sent.url)
    assert len([a for a in console_api.attempts()]) == 2


def test_two_resends_a_second_apart_send_one_email(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    with freeze_time(T0, real_asyncio=True) as clock:
        attempt = request_link(console_api)
        clock.tick(120)
        agent = desk("write")
        token = agent.csrf(f"/support/attempts/{attempt.id}")
        url = f"/support/attempts/{attempt.id}/resend"
        first = agent.client.post(url, data={"_csrf_token": token})
        clock.tick(1)
        second = agent.client.post(url, data={"_csrf_token": token})
        console_api.dispatch()
    assert "notice=resent" in str(first.url)
    assert second.status_code == 429
    assert len(console_api.tokens_sent()) == 2  # the person's email, and one resend


def test_a_double_click_on_resend_sends_one_email_even_without_a_cooldown(
    make_api: Callable[..., Api],
) -> None:
    """The resend form names the newest email the page showed: the second submit of the same
    form finds a newer one and is refused, whatever the cooldown."""
    api = make_api(public_base_url=BASE, resend_cooldown_seconds=0)
    api.account()
    attempt = request_link(api)
    created = room(api).agents.create_sync(
        email="fast@support.example.com", name="Fast", role="write", password=AGENT_PASSWORD
    )
    agent = Desk(api, browser(api), "fast@support.example.com", "write", created.totp_secret)
    agent.sign_in()
    assert agent.signed
    page = agent.client.get(f"/support/attempts/{attempt.id}")
    form = {
        "_csrf_token": CSRF.search(page.text).group(1),  # type: ignore[union-attr]
        "expected_latest": re.search(r'name="expected_latest" value="([^"]*)"', page.text).group(1),  # type: ignore[union-attr]
    }
    url = f"/support/attempts/{attempt.id}/resend"
    first = agent.client.post(url, data=form)
    second = agent.client.post(url, data=form)
    assert "notice=resent" in str(first.url)
    assert second.status_code == 429
    assert "meanwhile" in doc(second).by_id("resend-blocked").text
    api.dispatch()
    assert len(api.tokens_sent()) == 2  # the person's email, and one resend


def test_an_override_with_a_reason_resends_and_is_audited_and_a_double_click_sends_once(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    agent = desk("write")
    page = agent.client.get(f"/support/attempts/{attempt.id}")
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    latest = re.search(r'name="expected_latest" value="([^"]*)"', page.text).group(1)  # type: ignore[union-attr]
    assert latest == str(attempt.id)
    url = f"/support/attempts/{attempt.id}/resend"
    form = {"override": "yes", "expected_latest": latest, "_csrf_token": token}
    no_reason = agent.client.post(url, data=form)
    assert no_reason.status_code == 400
    data = {**form, "override_reason": "the caller deleted the email"}
    first = agent.client.post(url, data=data)
    second = agent.client.post(url, data=data)  # the same form, submitted twice
    assert "notice=resent" in str(first.url)
    assert second.status_code == 429
    assert "meanwhile" in doc(second).by_id("error-summary").text
    resends = [r for r in audit(console_api) if r[1] == "resend"]
    assert [r[3]["outcome"] for r in resends] == ["ok", "resend_refused"]
    assert resends[0][3]["override_reason"] == "the caller deleted the email"
    assert resends[0][3]["overridden"] == "resend_cooldown"
    console_api.dispatch()
    assert len(console_api.tokens_sent()) == 2


# -- accounts --------------------------------------------------------------------------------------


def test_the_account_view_tells_whether_an_account_exists_and_its_facts(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account(name="Jane Doe")
    signed = console_api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
    )
    assert signed.status_code == 200
    agent = desk("read")
    page = agent.get("/support/accounts", email="JANE.DOE@example.com")
    assert page.by_id("account-name").text == "Jane Doe"
    assert page.by_id("account-address").text == "j***e@e***e.com"
    assert page.by_id("last-sign-in").text != "never"
    assert len(body_rows(page.by_id("sessions"))) == 1
    assert signed.json()["session_token"] not in page.html
    missing = agent.get("/support/accounts", email="nobody@example.com")
    assert missing.has_id("no-account")


def test_an_agent_clears_a_login_slow_down_and_revokes_a_session(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    session = console_api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
    ).json()["session_token"]
    for _ in range(console_api.settings.login_free_failures + 1):
        console_api.client.post(
            "/api/login", json={"email": "jane.doe@example.com", "password": "x"}
        )
    slowed = console_api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
    )
    assert slowed.status_code == 429
    agent = desk("write")
    page = agent.get("/support/accounts", email="jane.doe@example.com")
    assert "Slowed down" in page.by_id("slow-down-state").text
    account_id = str(console_api.services.accounts.by_address_sync("jane.doe@example.com").id)  # type: ignore[union-attr]
    cleared = agent.post(
        f"/support/accounts/{account_id}/clear-slow-down",
        {},
        form=f"/support/accounts/{account_id}",
    )
    assert "notice=cleared" in str(cleared.url)
    assert "Not slowed down." in doc(cleared).by_id("slow-down-state").text
    again = console_api.client.post(
        "/api/login", json={"email": "jane.doe@example.com", "password": OLD_PASSWORD}
    )
    assert again.status_code == 200
    # Two sessions now; revoke the first one.
    page = agent.get(f"/support/accounts/{account_id}")
    refs = [n.text for n in page.all("td") if n.attrs.get("data-label") == "Session"]
    assert len(refs) == 2
    oldest = refs[-1]
    revoked = agent.post(
        f"/support/accounts/{account_id}/sessions/revoke",
        {"session": oldest},
        form=f"/support/accounts/{account_id}",
    )
    assert "notice=revoked" in str(revoked.url)
    auth = {"Authorization": f"Bearer {session}"}
    assert console_api.client.get("/api/session", headers=auth).status_code == 401
    newer = {"Authorization": f"Bearer {again.json()['session_token']}"}
    assert console_api.client.get("/api/session", headers=newer).status_code == 200
    actions = [
        (r[1], r[3]["outcome"]) for r in audit(console_api) if r[0] == f"agent:{agent.email}"
    ]
    assert ("clear_slow_down", "ok") in actions and ("revoke_session", "ok") in actions


# -- stats, audit, keys -------------------------------------------------------------------


def test_stats_draw_each_flows_funnel_and_states_with_the_numbers_beside(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    request_link(console_api)
    request_link(console_api, "nobody@example.com")
    page = desk("read").get("/support/stats", period="24h")
    funnel = page.by_id("funnel-password_recovery")
    counts = {tags(r, "th")[0].text: tags(r, "td")[0].text for r in body_rows(funnel)}
    assert counts["requested"] == "2" and counts["emailed"] == "1"
    states = page.by_id("states-password_recovery")
    # A state name may break after an underscore (<wbr>): the parser's text has a space there.
    by_state = {
        tags(r, "th")[0].text.replace("_ ", "_"): tags(r, "td")[0].text for r in body_rows(states)
    }
    assert by_state == {"emailed": "1", "unknown_account": "1"}
    charts = [n for n in page.all("svg") if n.attrs.get("class") == "chart"]
    assert charts and all(c.attrs["role"] == "img" for c in charts)
    # Each flow draws its own; this flow's two charts: five funnel steps, two states.
    ours = [c for c in charts if "password_recovery" in c.attrs.get("aria-labelledby", "")]
    assert len(ours) == 2
    assert sum(len(tags(c, "rect")) for c in ours) == 5 + 2


def test_the_audit_log_filters_by_agent_action_and_attempt(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    other = request_link(console_api, "other@example.com")
    reader = desk("read")
    reader.get(f"/support/attempts/{attempt.id}")
    reader.get(f"/support/attempts/{other.id}")
    writer = desk("write")
    page = writer.get("/support/audit", who=f"agent:{reader.email}", action="view_attempt")
    rows = body_rows(page.by_id("audit"))
    assert len(rows) == 2
    by_attempt = writer.get("/support/audit", attempt=support_reference(attempt.id))
    rows = body_rows(by_attempt.by_id("audit"))
    assert len(rows) == 1 and reader.email in rows[0].text


def test_support_keys_are_listed_and_a_write_agent_revokes_one(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    headers = console_api.support_headers("read", name="robot")
    assert console_api.client.get("/api/support/stats", headers=headers).status_code == 200
    reader = desk("read")
    listed = reader.get("/support/keys")
    assert "robot" in listed.by_id("keys").text and not tags(listed.by_id("keys"), "button")
    writer = desk("write")
    done = writer.post("/support/keys/revoke", {"name": "robot"}, form="/support/keys")
    assert "notice=revoked" in str(done.url)
    assert console_api.client.get("/api/support/stats", headers=headers).status_code == 401
    assert ("revoke_key", "robot") in [(r[1], r[2]) for r in audit(console_api)]


def test_every_console_page_speaks_french_with_lang_fr(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    console_api.account()
    attempt = request_link(console_api)
    agent = desk("write")
    for path in (
        "/support/attempts",
        f"/support/attempts/{attempt.id}",
        f"/support/attempts/{attempt.id}/events/cancel",
        "/support/accounts",
        "/support/stats",
        "/support/audit",
        "/support/keys",
        "/support/login",
    ):
        page = agent.get(path, lang="fr")
        assert page.lang == "fr", path
        assert page.h1 and "Attempt" not in page.h1 and "Find" not in page.h1, (path, page.h1)
    assert agent.get("/support/attempts", lang="fr").h1 == "Trouver une demande"


def _console_messages() -> list[tuple[str, ...]]:
    """Every message of the console's templates as Babel extracts it: (text,) or, for
    ngettext, (singular, plural)."""
    found: list[tuple[str, ...]] = []
    for template in sorted((TEMPLATE_DIR / "console").rglob("*.html")):
        with template.open("rb") as handle:
            options = {"extensions": "jinja2.ext.do", "trim_blocks": "1", "lstrip_blocks": "1"}
            for _line, function, message, _comments in babel_extract(
                handle, ["_", "gettext", "ngettext"], [], options
            ):
                if function == "ngettext":
                    found.append((message[0], message[1]))
                else:
                    found.append((message if isinstance(message, str) else message[0],))
    return found


def _french(message: tuple[str, ...], count: int) -> str:
    french = translations("fr")
    if len(message) == 2:
        return french.ngettext(message[0], message[1], count)
    return french.gettext(message[0])


def _console_po() -> dict[str, Any]:
    """console.po's entries by message id (a plural entry by its singular)."""
    with (LOCALE_DIR / "fr" / "LC_MESSAGES" / "console.po").open("rb") as handle:
        catalog = read_po(handle, locale="fr")
    return {(m.id if isinstance(m.id, str) else m.id[0]): m for m in catalog if m.id}


def test_every_console_text_has_a_french_translation_with_the_same_placeholders() -> None:
    """Each text of the console's templates has a checked entry in console.po (some French
    words are the English ones: "Session", "Action") or is one of the public pages' texts,
    translated in pages.po; a translation uses only the English text's placeholders."""
    entries = _console_po()
    messages = _console_messages()
    assert messages

    def translated(message: tuple[str, ...]) -> bool:
        entry = entries.get(message[0])
        if entry is None:  # a text the public pages share, translated in pages.po
            return _french(message, 1) != message[0]
        if entry.fuzzy:
            return False
        strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        return all(strings)

    missing = [m for m in messages if not translated(m)]
    assert missing == []
    named = re.compile(r"%\((\w+)\)[sd]")
    for message in messages:
        for count in (1, 2):
            assert set(named.findall(_french(message, count))) <= set(named.findall(message[-1])), (
                message
            )


def test_console_po_holds_no_stale_entries() -> None:
    """Every entry of console.po is a text a console template still uses."""
    assert set(_console_po()) - {m[0] for m in _console_messages()} == set()


# -- the case queue and a case (assisted recovery) -------------------------------------------


def _case(
    api: Api, owner: str, contact: str, account_name: str = "Jane Doe", **details: Any
) -> str:
    """An account at `owner` and a confirmed case asking to move it to `contact`."""
    api.account(owner, name=account_name)
    return confirmed_case(api, contact=contact, email=owner, **details)


def _queue_rows(page: Doc) -> list[Any]:
    return tags(page.by_id("queue"), "tr")[1:]


def _signals(row: Any) -> dict[str, str]:
    """A queue row's signals as its words read: {"Name": "✗ does not match", ...}."""
    found = {}
    for item in tags(row, "li"):
        name, value = tags(item, "span")[:2]
        found[name.text.strip()] = value.text.strip()
    return found


def test_the_case_queue_lists_the_waiting_cases_oldest_first_with_their_signals(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    """In review and waiting for the person's answer, oldest first, each with its reference,
    masked address, age in the agent's zone and match signals; a forgot-password attempt and
    a case still unconfirmed are not cases to decide."""
    with freeze_time(T0, real_asyncio=True) as clock:
        first = _case(console_api, "ann.lee@example.com", "ann.new@mail.example", "Ann Lee")
        clock.tick(3600)
        second = _case(
            console_api, "bob.ray@example.com", "bob.new@mail.example", "Rob Ray", name="Rob Ray"
        )
        clock.tick(3600)
        asked = _case(console_api, "cy.doe@example.com", "cy.new@mail.example", name="Cy Doe")
        assert fire(console_api, asked, "request_info", "Which city did you last sign in from?")
        clock.tick(60)
        assert submit(console_api, email="dee@example.com", contact_email="dee@mail.example")
        request_link(console_api, "ann.lee@example.com")
        reader = desk("read")
        page = reader.get("/support/queue")
        in_french = reader.get("/support/queue", lang="fr")
    rows = _queue_rows(page)
    assert [r.attrs["id"] for r in rows] == [
        f"case-{support_reference(uuid.UUID(i))}" for i in (first, second, asked)
    ]
    assert "a***e@e***e.com" in rows[0].text
    assert "2026-11-30 10:00:00" in rows[0].text  # 09:00 UTC in Paris
    # The case says "Jane Doe", the account "Ann Lee".
    assert _signals(rows[0]) == {"Account": "✓ found", "Name": "✗ does not match"}
    assert _signals(rows[1]) == {"Account": "✓ found", "Name": "✓ matches"}
    # In French the colon keeps its space before it, a no-break one.
    assert '<span class="signal-name">Compte</span>\u00a0: <span class="signal' in in_french.html
    assert "the person’s answer" in rows[2].text and "info_requested" in rows[2].text
    assert not page.has_id("overdue-count")
    assert "3 cases wait" in page.by_id("queue-count").text
    nav = page.all("nav")[0]
    assert any(a.attrs.get("href") == "/support/queue" for a in tags(nav, "a"))
    assert ("view_queue", f"agent:{reader.email}") in [(r[1], r[0]) for r in audit(console_api)]


def test_a_case_is_flagged_overdue_in_the_queue_one_second_past_the_review_deadline(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = _case(console_api, "ann.lee@example.com", "ann.new@mail.example")
        clock.tick(timedelta(days=3))
        agent = desk("read")  # signed in now: a session idle for days has ended
        at_edge = agent.get("/support/queue")
        [row] = _queue_rows(at_edge)
        assert "Overdue" not in row.text and "in_review" in row.text
        assert not at_edge.has_id("overdue-count")
        clock.tick(1)
        past = agent.get("/support/queue")
        [row] = _queue_rows(past)
        assert "⚑" not in row.text  # the mark is CSS; the words say it
        assert "Overdue: past the review deadline" in row.text
        assert "review_overdue" in row.text
        assert "1 is overdue" in past.by_id("overdue-count").text
        case = agent.get(f"/support/attempts/{case_id}")
        assert case.has_id("case-overdue")


def test_a_cases_page_shows_the_statement_the_signals_the_contact_and_the_exchanges(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    with freeze_time(T0, real_asyncio=True):
        case_id = _case(
            console_api,
            "jane.doe@example.com",
            CONTACT,
            birth_date="1985-03-14",
            account_created="2026-11",
        )
        fire(console_api, case_id, "request_info", "Which city did you last sign in from?")
        page = desk("read").get(f"/support/attempts/{case_id}")
    assert page.by_id("case-statement").text == STATEMENT
    assert "✓ found" in page.by_id("case-account").text
    assert "j***w@m***l.example" in page.by_id("case-contact").text
    assert CONTACT not in page.html
    assert "✓ matches" in page.by_id("signal-name").text
    assert "nothing on file" in page.by_id("signal-birth_date").text
    assert "1985-03-14" in page.by_id("case-details").text
    exchanges = page.by_id("case-exchanges").text
    assert "Which city did you last sign in from?" in exchanges and "No answer yet." in exchanges
    assert "Starts when the case is approved." in page.by_id("case-wait").text
    assert _current_section(page) == "/support/queue"  # a case is reached from the queue


def _current_section(page: Doc) -> str:
    """The address of the console section the navigation marks as the current page."""
    [current] = [a for a in tags(page.all("nav")[0], "a") if a.attrs.get("aria-current")]
    return str(current.attrs["href"])


def test_a_write_agent_approves_a_case_from_the_console_audited_under_their_name(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    with freeze_time(T0, real_asyncio=True):
        case_id = _case(console_api, "jane.doe@example.com", CONTACT)
        agent = desk("write")
        page = agent.get(f"/support/attempts/{case_id}")
        for event in ("approve", "deny", "request_info", "cancel"):
            assert page.by_id(f"event-{event}").attrs["href"] == (
                f"/support/attempts/{case_id}/events/{event}"
            )
        # Only an event that ends the case for good is confirmed with a red button.
        buttons = {
            event: agent.get(f"/support/attempts/{case_id}/events/{event}").by_id("confirm-event")
            for event in ("approve", "deny", "request_info", "cancel")
        }
        assert {e: b.attrs.get("class") for e, b in buttons.items()} == {
            "approve": None,
            "deny": "warning",
            "request_info": None,
            "cancel": "warning",
        }
        url = f"/support/attempts/{case_id}/events/approve"
        assert agent.get(url).h1 == f"Approve the case {support_reference(uuid.UUID(case_id))}?"
        assert agent.post(url, {"reason": "details match"}).status_code == 400
        assert console_api.services.engine.get_sync(case_id).state == "in_review"
        done = agent.post(url, {"reason": "details match, called back", "confirm": "yes"})
        assert str(done.url).endswith("?notice=fired")
        shown = doc(done)
        assert shown.by_id("attempt-state").text == "waiting"
        assert "Ends 2026-12-03 10:00:00" in shown.by_id("case-wait").text  # 3 days, Paris
        queue = agent.get("/support/queue")
    assert queue.has_id("queue-empty")
    approve = console_api.services.engine.history_sync(case_id)[-1]
    assert (approve.event, approve.actor) == ("approve", f"support:agent:{agent.email}")
    assert approve.detail["reason"] == "details match, called back"
    fired = [r for r in audit(console_api) if r[1] == "approve"]
    assert [(r[0], r[2], r[3]["reason"]) for r in fired] == [
        (f"agent:{agent.email}", case_id, "details match, called back")
    ]


def test_asking_for_more_sends_the_reason_as_the_question(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    case_id = _case(console_api, "jane.doe@example.com", CONTACT)
    agent = desk("write")
    url = f"/support/attempts/{case_id}/events/request_info"
    form = agent.get(url)
    assert "the person receives it by email" in tags(form.root, "label")[0].text
    question = "Which city did you last sign in from?"
    agent.post(url, {"reason": question, "confirm": "yes"})
    drain(console_api)
    assert console_api.services.engine.get_sync(case_id).state == "info_requested"
    [mail] = [m for m in mail_to(console_api.messages(), CONTACT) if question in text_of(m)]
    assert mail is not None


def test_a_read_agent_sees_the_queue_and_a_case_but_no_decision_and_gets_403_posting(
    console_api: Api, desk: Callable[..., Desk]
) -> None:
    case_id = _case(console_api, "jane.doe@example.com", CONTACT)
    reader = desk("read")
    queue = reader.get("/support/queue")
    assert len(_queue_rows(queue)) == 1
    page = reader.get(f"/support/attempts/{case_id}")
    assert page.has_id("read-only") and page.has_id("flow-detail")
    assert not any(page.has_id(f"event-{e}") for e in ("approve", "deny", "request_info"))
    assert [b.attrs.get("id") for b in page.all("button")] == ["sign-out"]
    token = reader.csrf("/support/queue")
    url = f"/support/attempts/{case_id}/events/approve"
    answer = reader.client.post(url, data={"reason": "x", "confirm": "yes", "_csrf_token": token})
    assert answer.status_code == 403
    assert console_api.services.engine.get_sync(case_id).state == "in_review"


def test_the_queue_and_a_case_speak_french(console_api: Api, desk: Callable[..., Desk]) -> None:
    with freeze_time(T0, real_asyncio=True) as clock:
        case_id = _case(console_api, "jane.doe@example.com", CONTACT)
        clock.tick(timedelta(days=3, seconds=1))
        agent = desk("write")
        queue = agent.get("/support/queue", lang="fr")
        case = agent.get(f"/support/attempts/{case_id}", lang="fr")
        approve = agent.get(f"/support/attempts/{case_id}/events/approve", lang="fr")
    assert queue.lang == "fr" and queue.h1 == "File des dossiers"
    [row] = _queue_rows(queue)
    assert "En retard" in row.text and _signals(row)["Nom"] == "✓ correspond"
    assert "1 est en retard" in queue.by_id("overdue-count").text
    assert "Le dossier" in case.html and "Déclaration de la personne" in case.html
    assert approve.h1.startswith("Approuver le dossier")
