"""The API reference page in a real browser: Swagger UI renders the whole API from files the
service serves itself, under its strict CSP, and an operation can be tried from the page."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import Screenshots
from tests.browser.live import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_reference_page_renders_every_operation_offline_and_tries_one(
    browser: Browser, server: LiveServer, shots: Screenshots
) -> None:
    """Every operation of /schema/openapi.json is listed; nothing is requested from another
    origin and the CSP blocks nothing; an operation opened shows its request and answer
    examples, and "Try it out" on GET /health answers 200 from the live service."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.goto(f"{server.base_url}/schema/reference")
    expect(page.locator(".opblock").first).to_be_visible()
    document = json.loads(page.request.get(f"{server.base_url}/schema/openapi.json").text())
    operations = sum(
        1 for item in document["paths"].values() for op in item.values() if isinstance(op, dict)
    )
    expect(page.locator(".opblock")).to_have_count(operations)
    shots.take(page, "reference")

    recovery = page.locator(".opblock-post", has_text="/api/recovery").first
    recovery.locator(".opblock-summary").click()
    expect(recovery.locator(".body-param__example, .highlight-code").first).to_contain_text(
        "ada@example.com"
    )
    expect(recovery.locator(".responses-table")).to_contain_text("202")
    shots.take(page, "an-operation-with-its-examples")

    health = page.locator(".opblock-get", has_text="/health").first
    health.locator(".opblock-summary").click()
    health.locator("button.try-out__btn").click()
    health.locator("button.execute").click()
    expect(health.locator(".live-responses-table")).to_contain_text("200")
    shots.take(page, "tried")

    origin = urlsplit(server.base_url).netloc
    foreign = [u for u in requested if urlsplit(u).netloc not in (origin, "")]
    assert foreign == [], foreign
    assert not [p for p in problems if "Content Security Policy" in p], problems
    context.close()
