"""An agent works at the support console in a real browser (Debian's Chromium), with the
keyboard alone, on a desk and on a phone, in English and in French.

The walk: the agent signs in (password, then the TOTP code of the seed that
`recovery support-agent create` printed), finds the attempt by the reference
the person's page showed, reads its timeline and diagram, resends once (a
double submit sends one email), cancels with a reason and a confirmation,
clears an account's login slow-down and revokes one of its sessions, and
looks at the stats, the audit log and the keys. Another walk opens the case
queue of assisted recovery, reads a case (its statement and match signals) and
approves it with a reason. A read agent sees no action and gets 403 when it
posts anyway. Every console page is checked with axe-core (0 violations; the
counts are saved as `axe.json`) and pictured under
`test-output/browser/<test name>/`; on a phone nothing scrolls sideways.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect

from api.i18n import translations
from api.support.reference import support_reference
from tests.browser.conftest import ACTION_TIMEOUT_MS, Account, Screenshots
from tests.browser.journey import MAX_TABS, Journey, assert_no_horizontal_scroll
from tests.browser.live import LiveServer, live_server, message_text

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AGENT_PASSWORD = "Harbor!Velvet-5820-Lantern"
# Few enough failed sign-ins that a test can slow an account down by itself.
FREE_FAILURES = 3
PHONE = "Pixel 7"
_agents = itertools.count(1)
_axe = Axe()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`recovery serve` for this module: as the suite's, but an account is slowed down after
    a few failed sign-ins, so the agent has a slow-down to clear."""
    extra = {"RECOVERY_LOGIN_FREE_FAILURES": str(FREE_FAILURES)}
    with live_server(tmp_path_factory.mktemp("console-server"), extra) as running:
        yield running


@dataclass(frozen=True)
class AgentLogin:
    """An agent made through `recovery support-agent create`, and their TOTP seed."""

    email: str
    name: str
    role: str
    secret: str | None


def create_agent(server: LiveServer, role: str) -> AgentLogin:
    email = f"agent{next(_agents)}-{role}@support.example.test"
    name = f"Agent {role.title()} {email.split('-')[0][5:]}"
    out = server.cli(
        "support-agent",
        "create",
        *("--email", email, "--name", name, "--role", role),
        *("--time-zone", "Europe/Paris", "--password-stdin"),
        stdin=AGENT_PASSWORD + "\n",
    )
    found = re.search(r"^totp-secret: (\S+)$", out, re.MULTILINE)
    return AgentLogin(email, name, role, found.group(1) if found else None)


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    made: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        context = browser.new_context(**options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


def tab_to(page: Page, target: Locator) -> None:
    """Tab (or Shift+Tab, past the end) until `target` has the focus, as a person would."""
    handle = target.element_handle()
    assert handle is not None, "the element to reach is not on the page"
    for _ in range(MAX_TABS * 3):
        if page.evaluate("e => document.activeElement === e", handle):
            return
        page.keyboard.press("Tab")
    raise AssertionError("Tab never reached the element")


@dataclass
class Desk:
    """One agent's browser tab at the console, driven with the keyboard alone."""

    page: Page
    server: LiveServer
    agent: AgentLogin
    shots: Screenshots
    lang: str = "en"
    phone_width: int | None = None
    axe_counts: dict[str, int] = field(default_factory=dict)

    def _(self, text: str, **params: Any) -> str:
        """The console's text in this desk's language (the French from console.po)."""
        translated = translations(self.lang).gettext(text)
        return translated % params if params else translated

    @property
    def base(self) -> str:
        return f"{self.server.base_url}/support"

    def arrived(self, step: str, title: str | None = None) -> None:
        """The page of `step` is shown, in the desk's language, fits the screen, has no
        axe-core violation, and is pictured."""
        if title is not None:
            expect(self.page.locator("h1")).to_have_text(title)
        expect(self.page.locator("html")).to_have_attribute("lang", self.lang)
        self.shots.take(self.page, step)
        if self.phone_width is not None:
            assert_no_horizontal_scroll(self.page, step, self.phone_width)
        results = _axe.run(self.page)
        self.axe_counts[step] = results.violations_count
        assert results.violations_count == 0, f"{step}: {results.generate_report()}"

    def save_axe_counts(self) -> None:
        """axe-core's violations per page, beside the screenshots (all 0, or the test failed)."""
        path = self.shots.folder / "axe.json"
        path.write_text(json.dumps(self.axe_counts, indent=2) + "\n", encoding="utf-8")

    def follow(self, link: Locator) -> None:
        tab_to(self.page, link)
        self.page.keyboard.press("Enter")

    def type_into(self, box: Locator, value: str) -> None:
        tab_to(self.page, box)
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(value)

    def press(self, button: Locator) -> None:
        """Tab to a button and press Enter on it."""
        tab_to(self.page, button)
        self.page.keyboard.press("Enter")

    def nav(self, label: str) -> None:
        self.follow(self.page.get_by_role("navigation").get_by_role("link", name=label))

    # -- the screens ---------------------------------------------------------------------

    def sign_in(self) -> None:
        self.page.goto(f"{self.base}/login")
        self.arrived("agent-sign-in", self._("Agent sign-in"))
        self.type_into(self.page.locator("#email"), self.agent.email)
        self.type_into(self.page.locator("#password"), AGENT_PASSWORD)
        self.page.keyboard.press("Enter")
        if self.agent.secret is not None:
            self.arrived("second-factor", self._("Second factor"))
            self.type_into(self.page.locator("#code"), pyotp.TOTP(self.agent.secret).now())
            self.page.keyboard.press("Enter")
        self.arrived("find", self._("Find an attempt"))
        expect(self.page.locator("#agent-name")).to_have_text(self.agent.name)

    def find(self, reference: str) -> None:
        """The reference typed as a person reads it out on the phone."""
        spoken = " ".join(reference.replace("-", "")).lower()
        self.type_into(self.page.locator("#q"), spoken)
        self.page.keyboard.press("Enter")
        self.arrived("find-results", self._("Find an attempt"))
        link = self.page.locator("table a[href^='/support/attempts/']")
        expect(link).to_have_count(1)
        self.follow(link)

    def read_attempt(self, reference: str, step: str) -> None:
        self.arrived(step)
        expect(self.page.locator("h1")).to_contain_text(reference)
        expect(self.page.locator("#timeline li").first).to_be_visible()
        expect(self.page.locator("figure svg.diagram")).to_be_visible()
        expect(self.page.locator("#diagram-title")).to_contain_text("requested → emailed")


def person_requests_a_link(
    server: LiveServer,
    new_context: Callable[..., BrowserContext],
    account: Account,
    shots: Screenshots,
    lang: str,
) -> str:
    """The person's own "Forgot password?" in their browser: the reference their page shows."""
    context = new_context(locale="fr-FR" if lang == "fr" else "en-US")
    journey = Journey(context.new_page(), server, account, shots, lang=lang)
    journey.open_sign_in()
    journey.ask_for_link()
    server.mail_to(account.email)
    context.close()
    return journey.reference


def signed_in_session(server: LiveServer, account: Account) -> str:
    answer = httpx.post(
        f"{server.base_url}/api/login",
        json={"email": account.email, "password": account.password},
        timeout=30.0,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["session_token"])


def slow_down(server: LiveServer, account: Account) -> None:
    """Failed sign-ins until the next one is slowed down."""
    for _ in range(FREE_FAILURES + 1):
        httpx.post(
            f"{server.base_url}/api/login",
            json={"email": account.email, "password": "not-the-password"},
            timeout=30.0,
        )
    slowed = httpx.post(
        f"{server.base_url}/api/login",
        json={"email": account.email, "password": account.password},
        timeout=30.0,
    )
    assert slowed.status_code == 429, slowed.text


def session_alive(server: LiveServer, token: str) -> bool:
    answer = httpx.get(
        f"{server.base_url}/api/session",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30.0,
    )
    return answer.status_code == 200


WALKS = [("desk", "en"), ("desk", "fr"), ("phone", "en"), ("phone", "fr")]


@pytest.mark.parametrize(("screen", "lang"), WALKS, ids=[f"{s}-{lang}" for s, lang in WALKS])
def test_an_agent_works_an_attempt_and_an_account_with_the_keyboard_alone(
    server: LiveServer,
    playwright: Playwright,
    new_context: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    screen: str,
    lang: str,
) -> None:
    """Sign in with the second factor, find by the spoken reference, read the timeline and
    diagram, resend (two presses, one email), cancel with a reason, clear a slow-down,
    revoke a session, then stats, audit and keys: no mouse, every page axe-clean."""
    account = make_account(locale=lang)
    reference = person_requests_a_link(server, new_context, account, shots, lang)
    options: dict[str, Any] = {"locale": "fr-FR" if lang == "fr" else "en-US"}
    if screen == "phone":
        options.update(playwright.devices[PHONE])
    context = new_context(**options)
    page = context.new_page()
    page.add_init_script(CLICK_RECORDER)
    width = playwright.devices[PHONE]["viewport"]["width"] if screen == "phone" else None
    desk = Desk(page, server, create_agent(server, "write"), shots, lang, width)

    desk.sign_in()
    desk.find(reference)
    desk.read_attempt(reference, "attempt")

    # Resend: Enter twice on the button, as an impatient agent double-presses. Whether the
    # browser posts the second press depends on how soon the first answer replaces the page,
    # so the second press's form is then sent again as the browser would, cookies and all:
    # the server must refuse it whichever way the race went.
    tab_to(page, page.locator("#resend-button"))
    form = page.evaluate(
        "() => { const f = document.querySelector('#resend-button').form;"
        " return [f.action, Object.fromEntries(new FormData(f))]; }"
    )
    with page.expect_response(lambda r: r.url == form[0]) as first:
        page.keyboard.press("Enter")
        page.keyboard.press("Enter")
    assert first.value.request.method == "POST"
    page.wait_for_load_state()
    again = page.request.post(form[0], form=form[1], max_redirects=0)
    assert again.status in (409, 429), again.status  # a later press sends nothing more
    server.mail_to(account.email, 2)
    desk.arrived("after-resend")
    desk.nav(desk._("Find"))
    desk.type_into(page.locator("#q"), account.email)
    page.keyboard.press("Enter")
    desk.arrived("find-by-address", desk._("Find an attempt"))
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(2)  # the person's request and exactly one resend
    assert len(server.sink.to(account.email)) == 2

    # Cancel the newest attempt with a reason and a confirmation.
    desk.follow(rows.first.locator("a[href^='/support/attempts/']"))
    desk.arrived("newest-attempt")
    desk.follow(page.locator("#event-cancel"))
    desk.arrived("confirm-cancel")
    desk.type_into(page.locator("#reason"), "the caller did not ask for it")
    tab_to(page, page.locator("#confirm"))
    page.keyboard.press("Space")
    desk.press(page.locator("#confirm-event"))
    desk.arrived("cancelled")
    expect(page.locator("#attempt-state")).to_have_text("cancelled")
    expect(page.locator("#timeline")).to_contain_text("the caller did not ask for it")

    # The account: clear its slow-down, revoke its older session.
    old_session = signed_in_session(server, account)
    slow_down(server, account)
    desk.nav(desk._("Accounts"))
    desk.arrived("accounts")
    desk.type_into(page.locator("#email"), account.email)
    page.keyboard.press("Enter")
    desk.arrived("account")
    expect(page.locator("#account-name")).to_have_text(account.name)
    expect(page.locator("#clear-slow-down")).to_be_visible()
    desk.press(page.locator("#clear-slow-down"))
    desk.arrived("slow-down-cleared")
    expect(page.locator("#slow-down-state")).to_contain_text(desk._("Not slowed down."))
    new_session = signed_in_session(server, account)  # works again at once
    revoke = page.locator("#sessions button")
    page.reload()
    expect(revoke).to_have_count(2)
    desk.press(revoke.last)  # the oldest session is listed last
    desk.arrived("session-revoked")
    assert not session_alive(server, old_session)
    assert session_alive(server, new_session)

    desk.nav(desk._("Stats"))
    desk.arrived("stats")
    desk.nav(desk._("Audit"))
    desk.arrived("audit")
    expect(page.locator("#audit")).to_contain_text(desk.agent.email)  # under the agent's name
    desk.nav(desk._("Keys"))
    desk.arrived("keys")

    assert recorded_clicks(page) == [], "mouse clicks happened"
    desk.save_axe_counts()


CODE = re.compile(r"^\s*(\d{6})\s*$", re.MULTILINE)
STATEMENT = "My work mailbox was closed when I left; I still sign in on my phone every day."


def confirmed_case(server: LiveServer, account: Account) -> str:
    """A person's "I can't access this email" for the account, its code typed back (as the
    case's own pages do, here over their JSON API): the case's reference."""
    contact = account.email.replace("@example.test", "@new-mail.example.test")
    asked = httpx.post(
        f"{server.base_url}/api/assisted-recovery",
        json={
            "email": account.email,
            "contact_email": contact,
            "name": account.name,
            "statement": STATEMENT,
        },
        timeout=30.0,
    )
    assert asked.status_code == 202, asked.text
    found = CODE.search(message_text(server.mail_to(contact)[-1]))
    assert found
    confirmed = httpx.post(
        f"{server.base_url}/api/assisted-recovery/confirm",
        json={"contact_email": contact, "code": found.group(1)},
        timeout=30.0,
    )
    assert confirmed.status_code == 200, confirmed.text
    server.mail_to(account.email)  # the owner is told: the case is in the queue
    key = server.create_support_key(f"queue-{next(_agents)}", "read")
    listed = httpx.get(
        f"{server.base_url}/api/support/attempts",
        params={"flow": "assisted_recovery", "email": account.email},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30.0,
    )
    [case] = listed.json()["items"]
    return support_reference(uuid.UUID(case["id"]))


CASE_WALKS = [("desk", "en"), ("phone", "fr")]


@pytest.mark.parametrize(
    ("screen", "lang"), CASE_WALKS, ids=[f"{s}-{lang}" for s, lang in CASE_WALKS]
)
def test_an_agent_approves_an_assisted_case_from_the_queue_with_the_keyboard_alone(
    server: LiveServer,
    playwright: Playwright,
    new_context: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
    screen: str,
    lang: str,
) -> None:
    """A write agent opens the case queue, finds the case there, reads its statement and
    match signals, approves it with a reason and a confirmation, and the case leaves the
    queue for its waiting period: no mouse, every page axe-clean."""
    account = make_account(locale=lang)
    reference = confirmed_case(server, account)
    options: dict[str, Any] = {"locale": "fr-FR" if lang == "fr" else "en-US"}
    if screen == "phone":
        options.update(playwright.devices[PHONE])
    page = new_context(**options).new_page()
    page.add_init_script(CLICK_RECORDER)
    width = playwright.devices[PHONE]["viewport"]["width"] if screen == "phone" else None
    desk = Desk(page, server, create_agent(server, "write"), shots, lang, width)

    desk.sign_in()
    desk.nav(desk._("Case queue"))
    desk.arrived("queue", desk._("Case queue"))
    row = page.locator(f"#case-{reference}")
    expect(row).to_contain_text("in_review")
    expect(row).to_contain_text(desk._("matches"))
    desk.follow(row.get_by_role("link", name=reference))
    desk.arrived("case")
    expect(page.locator("#case-statement")).to_have_text(STATEMENT)
    expect(page.locator("#signal-name")).to_contain_text(desk._("matches"))
    expect(page.locator("#case-account")).to_contain_text(desk._("found"))

    desk.follow(page.locator("#event-approve"))
    desk.arrived("confirm-approve")
    desk.type_into(page.locator("#reason"), "called the person back on the phone on file")
    tab_to(page, page.locator("#confirm"))
    page.keyboard.press("Space")
    desk.press(page.locator("#confirm-event"))
    desk.arrived("approved")
    expect(page.locator("#attempt-state")).to_have_text("waiting")
    expect(page.locator("#timeline")).to_contain_text("called the person back")
    expect(page.locator("#case-wait time")).to_be_visible()  # when the waiting period ends

    desk.nav(desk._("Case queue"))
    desk.arrived("queue-after-approval", desk._("Case queue"))
    expect(page.locator(f"#case-{reference}")).to_have_count(0)
    desk.nav(desk._("Audit"))
    desk.arrived("audit-after-approval")
    expect(page.locator("#audit")).to_contain_text(desk.agent.email)
    expect(page.locator("#audit")).to_contain_text("approve")

    assert recorded_clicks(page) == [], "mouse clicks happened"
    desk.save_axe_counts()


def test_a_read_agent_sees_no_action_and_is_refused_when_posting_anyway(
    server: LiveServer,
    new_context: Callable[..., BrowserContext],
    make_account: Callable[..., Account],
    shots: Screenshots,
) -> None:
    """A read agent signs in with the password alone, reads an attempt with no button but
    "Sign out", and a cancel posted from its own session anyway is a 403 that changes
    nothing."""
    account = make_account()
    reference = person_requests_a_link(server, new_context, account, shots, "en")
    page = new_context(locale="en-US").new_page()
    desk = Desk(page, server, create_agent(server, "read"), shots)
    assert desk.agent.secret is None
    desk.sign_in()
    desk.find(reference)
    desk.read_attempt(reference, "attempt-read-only")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("main button, main a.button")).to_have_count(0)
    attempt_url = page.url
    token = page.locator("input[name=_csrf_token]").first.get_attribute("value")
    answer = page.request.post(
        f"{attempt_url}/events/cancel",
        form={"reason": "just because", "confirm": "yes", "_csrf_token": token or ""},
    )
    assert answer.status == 403
    page.goto(f"{attempt_url}/events/cancel")
    desk.arrived("refused")
    page.goto(attempt_url)
    expect(page.locator("#attempt-state")).to_have_text("emailed")
    desk.save_axe_counts()


CLICK_RECORDER = """
document.addEventListener('click', event => {
  if (!event.isTrusted || event.detail === 0) return;
  const clicks = JSON.parse(sessionStorage.getItem('clicks') || '[]');
  clicks.push(event.target.tagName);
  sessionStorage.setItem('clicks', JSON.stringify(clicks));
}, true);
"""


def recorded_clicks(page: Page) -> list[str]:
    return list(page.evaluate("JSON.parse(sessionStorage.getItem('clicks') || '[]')"))
