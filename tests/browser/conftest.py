"""Fixtures of the browser suite: a live server, Debian's Chromium, accounts, screenshots.

Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright for Python;
no browser is ever downloaded. Without it the suite skips with a reason,
except under CI=true where that is a failure. One `recovery serve` runs per
test module (its own SQLite file, mail to a loopback aiosmtpd sink); every
test makes its own account, so tests do not share attempts or throttles.

Screenshots of every step go to `test-output/browser/<test name>/` at the
repository root (git-ignored), so a failing run leaves pictures behind.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.browser.live import LiveServer, live_server
from tests.support.tools import require

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous for a 2-core CI machine hashing Argon2 at production cost.
ACTION_TIMEOUT_MS = 20_000
expect.set_options(timeout=ACTION_TIMEOUT_MS)
# Strong enough for both policy profiles: 16+ characters, letters, digits,
# specials, no dictionary words a person's data would match.
ORIGINAL_PASSWORD = "Quartz!Lantern-7401-Mosaic"

_serial = itertools.count(1)


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's Chromium; the suite skips without it (fails under CI=true)."""
    return str(require("chromium"))


@pytest.fixture(scope="module")
def playwright(chromium_executable: str) -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright, chromium_executable: str) -> Iterator[Browser]:
    """Headless Chromium for one module of tests."""
    browser = playwright.chromium.launch(
        executable_path=chromium_executable, headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`recovery serve` for one module of tests, with mail to a loopback SMTP sink."""
    with live_server(tmp_path_factory.mktemp("browser-server")) as running:
        yield running


@dataclass(frozen=True)
class Account:
    """An account made for one test through `recovery accounts create`."""

    email: str
    name: str
    password: str
    locale: str


@pytest.fixture
def make_account(server: LiveServer, request: pytest.FixtureRequest) -> Callable[..., Account]:
    """Create a fresh account (unique address) on the live server."""

    def make(locale: str = "en", name: str = "Camille Martin") -> Account:
        slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
        email = f"{slug}-{next(_serial)}@example.test"
        server.create_account(email, name, ORIGINAL_PASSWORD, locale=locale)
        return Account(email=email, name=name, password=ORIGINAL_PASSWORD, locale=locale)

    return make


class Screenshots:
    """Numbered full-page screenshots of one test's steps."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._count = itertools.count(1)
        self.taken: list[Path] = []

    def take(self, page: Page, step: str) -> Path:
        path = self.folder / f"{next(self._count):02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


def output_root(config: pytest.Config) -> Path:
    """`test-output/` at the repository root (git-ignored)."""
    return Path(config.rootpath) / "test-output"


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Screenshots:
    """Where this test's screenshots go: test-output/browser/<test name>/ (emptied first)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = output_root(request.config) / "browser" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return Screenshots(folder)
