"""Fixtures of the schemathesis run: a live server with seeded data, its OpenAPI, a tally.

The server is a real `recovery serve` subprocess (its own SQLite file, mail to
a loopback aiosmtpd sink). Before the fuzzer starts, the fixture seeds what an
outside tool cannot invent: accounts, attempts in several states, live link
tokens (read from the received emails), a session, and support keys made with
the command line. The test substitutes those real values into some of the
generated cases, so the success answers (200/202/204) are checked against the
schema too, not only the 4xx ones.

The tally of cases run (per operation and status) is written to
`test-output/fuzz/schemathesis.json` and printed in the run's summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Config
from schemathesis.schemas import BaseSchema

from tests.browser.live import LiveServer, live_server, reset_link
from tests.support.tools import require

SEED = 20261130
MAX_EXAMPLES = 25
ACCOUNT_PASSWORD = "Quartz!Lantern-7401-Mosaic"
TOKENS_NEEDED = ("verify", "password", "cancel")


@dataclass
class Seeded:
    """Real values the fuzzer could not guess, made through the product's own front doors."""

    write_key: str
    read_key: str
    email: str
    password: str
    session_token: str
    logout_token: str
    attempt_ids: list[str]
    tokens: dict[str, str]


@dataclass
class Tally:
    """Cases sent, per operation and generation mode, and per status code."""

    by_operation: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    substituted: int = 0

    def cases(self, label: str, mode: object) -> int:
        """How many cases of this operation and mode were sent so far."""
        return self.by_operation[(label, str(mode))]

    def record(self, label: str, mode: object, status: int) -> None:
        self.by_operation[(label, str(mode))] += 1
        self.by_status[status] += 1
        self.outcomes[(label, str(mode), status)] += 1

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": self.total,
            "cases_with_seeded_values": self.substituted,
            "operations": len({label for label, _ in self.by_operation}),
            "by_operation": {
                f"{label} [{mode}]": n for (label, mode), n in sorted(self.by_operation.items())
            },
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_operation_and_status": {
                f"{label} [{mode}] {status}": n
                for (label, mode, status), n in sorted(self.outcomes.items())
            },
        }


_tally = Tally()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A fully equipped server: with Graphviz, so every diagram format it documents is served."""
    require("graphviz")
    with live_server(tmp_path_factory.mktemp("fuzz-server")) as running:
        yield running


def _request_link(server: LiveServer, http: httpx.Client, email: str) -> str:
    sent_before = len(server.sink.to(email))
    answer = http.post("/api/recovery", json={"email": email})
    assert answer.status_code == 202, answer.text
    return reset_link(server.mail_to(email, sent_before + 1)[-1])


def _token_of(link: str) -> str:
    return link.split("token=", 1)[1]


def _login(http: httpx.Client, email: str, password: str) -> str:
    answer = http.post("/api/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["session_token"])


@pytest.fixture(scope="module")
def seeded(fuzz_server: LiveServer) -> Seeded:
    """Accounts, attempts, live tokens, sessions and support keys on the fuzzed server."""
    server = fuzz_server
    email = "fuzz-owner@example.test"
    server.create_account(email, "Dominique Lefort", ACCOUNT_PASSWORD)
    tokens: dict[str, str] = {}
    with httpx.Client(base_url=server.base_url, timeout=30.0) as http:
        # One account per token: a newer link for the same account supersedes the older.
        for purpose in TOKENS_NEEDED:
            address = f"fuzz-{purpose}@example.test"
            server.create_account(address, "Dominique Lefort", ACCOUNT_PASSWORD)
            tokens[purpose] = _token_of(_request_link(server, http, address))
        # An attempt for an unknown address, and one opened link: several states to list.
        assert http.post("/api/recovery", json={"email": "nobody@example.test"}).status_code == 202
        opened = _token_of(_request_link(server, http, email))
        assert http.post("/api/recovery/verify", json={"token": opened}).status_code == 200
        session_token = _login(http, email, ACCOUNT_PASSWORD)
        logout_token = _login(http, email, ACCOUNT_PASSWORD)
        write_key = server.create_support_key("fuzz-write", "write")
        read_key = server.create_support_key("fuzz-read", "read")
        listed = http.get(
            "/api/support/attempts",
            params={"limit": 50},
            headers={"Authorization": f"Bearer {read_key}"},
        )
        assert listed.status_code == 200, listed.text
        attempt_ids = [item["id"] for item in listed.json()["items"]]
    assert attempt_ids, "the seeded attempts are not listed"
    return Seeded(
        write_key=write_key,
        read_key=read_key,
        email=email,
        password=ACCOUNT_PASSWORD,
        session_token=session_token,
        logout_token=logout_token,
        attempt_ids=attempt_ids,
        tokens=tokens,
    )


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer, seeded: Seeded) -> BaseSchema:
    """The live server's OpenAPI document, as schemathesis loads it from the URL."""
    config = Config.from_dict({"seed": SEED, "base-url": fuzz_server.base_url})
    return schemathesis.openapi.from_url(
        f"{fuzz_server.base_url}/schema/openapi.json", config=config, timeout=30
    )


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts the cases; written to test-output/fuzz/schemathesis.json when the module ends."""
    yield _tally
    out = Path(request.config.rootpath) / "test-output" / "fuzz"
    out.mkdir(parents=True, exist_ok=True)
    (out / "schemathesis.json").write_text(json.dumps(_tally.as_dict(), indent=2) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line in the run's summary: how many cases schemathesis sent."""
    if _tally.total:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(_tally.by_status.items()))
        operations = len({label for label, _ in _tally.by_operation})
        terminalreporter.write_line(
            f"schemathesis: {_tally.total} cases over {operations} operations "
            f"({_tally.substituted} with seeded values); statuses {statuses}"
        )
