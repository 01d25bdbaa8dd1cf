"""Which language and time zone the emails use, on SQLite and PostgreSQL.

A request that names a language (`?lang=`, Accept-Language, the page's own)
fixes it on the attempt; one that names none (a JSON client without
Accept-Language) gets the account's, fixed on the attempt when the link is
emailed, so the "password changed" notice speaks it too. Times are given in
the browser's zone the page's form sent, else in UTC, said as such.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from freezegun import freeze_time
from litestar.testing import TestClient

from tests.api.conftest import PUBLIC_BASE_URL, Api

T0 = datetime(2026, 12, 1, 7, 32, tzinfo=UTC)
NEW_PASSWORD = "Velvet#Harbor-2958-Juniper"


def body(message: object) -> str:
    part = message.get_body(("plain",))  # type: ignore[attr-defined]
    return str(part.get_content())


def change_password(api: Api, token: str) -> None:
    answer = api.client.post(
        "/api/recovery/password",
        json={"token": token, "password": NEW_PASSWORD, "password_confirm": NEW_PASSWORD},
    )
    assert answer.status_code == 200, answer.text
    api.dispatch()


def test_a_json_request_naming_no_language_gets_the_accounts_language(api: Api) -> None:
    """No ?lang= and no Accept-Language for a French account: both emails are French, and
    the attempt records French once the link is emailed."""
    api.account("jean@exemple.fr", name="Jean Dupont", locale="fr")
    with freeze_time(T0, real_asyncio=True):
        token = api.link_token("jean@exemple.fr")
        [attempt] = api.attempts()
        assert attempt.data["locale"] == "fr"
        change_password(api, token)
    link, changed = api.messages()
    assert [str(m["Content-Language"]) for m in (link, changed)] == ["fr", "fr"]
    assert "Bonjour Jean Dupont," in body(link)
    assert "jusqu’au mardi 1 décembre 2026 à 08:32 (UTC)" in body(link)
    assert "modifié le mardi 1 décembre 2026 à 07:32 (UTC)" in body(changed)


def test_a_language_the_request_names_wins_over_the_accounts(api: Api) -> None:
    """Accept-Language English for a French account: the emails are English."""
    api.account("jean@exemple.fr", name="Jean Dupont", locale="fr")
    api.link_token("jean@exemple.fr", **{"Accept-Language": "en-GB"})
    [message] = api.messages()
    assert message["Content-Language"] == "en"
    assert "Hello Jean Dupont," in body(message)


def browser(api: Api) -> TestClient:  # type: ignore[type-arg]
    """A client on the public https address (the forms' cookies are Secure there)."""
    return TestClient(api.app, base_url=PUBLIC_BASE_URL)


def test_the_browsers_time_zone_from_the_form_gives_the_emails_times(api: Api) -> None:
    """The "Forgot password?" form's hidden `tz` field (filled by the page's script) is
    kept on the attempt; the link's expiry and the "password changed" time are in it."""
    api.account("jane@example.com")
    client = browser(api)
    with freeze_time(T0, real_asyncio=True):
        page = client.get("/recovery?lang=en")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = client.post(
            "/recovery",
            data={"email": "jane@example.com", "tz": "America/New_York", "_csrf_token": csrf[1]},
        )
        assert answer.status_code == 200
        api.dispatch()
        [attempt] = api.attempts()
        assert attempt.data["time_zone"] == "America/New_York"
        token = api.tokens_sent()[-1]
        change_password(api, token)
    link, changed = api.messages()
    assert "until Tuesday, December 1, 2026 at 3:32\u202fAM (New York time)" in body(link)
    assert "changed on Tuesday, December 1, 2026 at 2:32\u202fAM (New York time)" in body(changed)


def test_a_time_zone_that_names_no_zone_is_not_kept(api: Api) -> None:
    """A forged `tz` (a path, a made-up zone) is dropped: the emails say UTC."""
    api.account("jane@example.com")
    client = browser(api)
    page = client.get("/recovery")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    for forged in ("../../../etc/passwd", "Mars/Olympus", "x" * 200):
        answer = client.post(
            "/recovery", data={"email": "jane@example.com", "tz": forged, "_csrf_token": csrf[1]}
        )
        assert answer.status_code == 200
    assert len(api.attempts()) == 3
    assert all("time_zone" not in a.data for a in api.attempts())
