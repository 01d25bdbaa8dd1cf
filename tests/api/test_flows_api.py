"""The flows endpoints: the registered flows, each described, and their diagrams in four formats.

These read no database, so one backend (a SQLite file) is enough. SVG and PNG
are rendered by the real Graphviz; "Graphviz missing" is a PATH without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient, TestClient

from api.accounts.passwords import Argon2Hasher
from api.settings import Settings
from api.web.app import create_app
from tests.api.conftest import assert_error
from tests.support.tools import require

DIAGRAM = "/api/flows/password_recovery/diagram"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'flows.db'}", link_ttl_minutes=45)
    with TestClient(create_app(settings, hasher=Argon2Hasher.for_tests())) as client:
        yield client


def test_the_registered_flows_are_listed(client: TestClient) -> None:
    answer = client.get("/api/flows")
    assert answer.status_code == 200
    flow, assisted = answer.json()["items"]
    # The newest version: new attempts start on it (version 2 adds the code).
    assert (flow["name"], flow["version"]) == ("password_recovery", 2)
    assert (assisted["name"], assisted["version"]) == ("assisted_recovery", 1)
    assert flow["description"] and assisted["description"]


def test_a_flow_is_described_with_states_events_transitions_and_configured_deadlines(
    client: TestClient,
) -> None:
    answer = client.get("/api/flows/password_recovery")
    assert answer.status_code == 200
    flow = answer.json()
    states = {s["name"]: s for s in flow["states"]}
    assert set(states) == {
        "requested",
        "emailed",
        "link_opened",
        "password_set",
        "logged_in",
        "expired",
        "cancelled",
        "superseded",
        "unknown_account",
        "throttled",
        "undeliverable",
    }
    assert states["requested"]["initial"] and states["logged_in"]["final"]
    assert set(flow["events"]) == {
        "dispatch",
        "bounce",
        "open_link",
        "set_password",
        "log_in",
        "expire",
        "cancel",
        "supersede",
        "enter_code",
    }
    assert {"from": "link_opened", "event": "set_password", "to": "password_set"}.items() <= next(
        t for t in flow["transitions"] if t["event"] == "set_password"
    ).items()
    deadlines = {d["state"]: d for d in flow["deadlines"]}
    assert deadlines["emailed"]["after_seconds"] == 45 * 60  # from link_ttl_minutes
    assert deadlines["link_opened"]["restart"] is False


def test_diagrams_come_in_mermaid_dot_svg_and_png(client: TestClient) -> None:
    mermaid = client.get(DIAGRAM, params={"format": "mermaid"})
    assert mermaid.status_code == 200
    assert mermaid.headers["content-type"].startswith("text/plain")
    assert mermaid.text.startswith("stateDiagram-v2")
    dot = client.get(DIAGRAM, params={"format": "dot"})
    assert dot.headers["content-type"].startswith("text/vnd.graphviz")
    assert dot.text.startswith('digraph "password_recovery"')
    require("graphviz")
    svg = client.get(DIAGRAM)  # svg is the default
    assert (svg.status_code, svg.headers["content-type"]) == (200, "image/svg+xml")
    assert b"<svg" in svg.content and b"link_opened" in svg.content
    png = client.get(DIAGRAM, params={"format": "png"})
    assert (png.status_code, png.headers["content-type"]) == (200, "image/png")
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_unknown_flows_are_404_and_unknown_formats_400(client: TestClient) -> None:
    assert_error(client.get("/api/flows/nope"), 404, "unknown_flow")
    assert_error(client.get("/api/flows/nope/diagram?format=mermaid"), 404, "unknown_flow")
    for bad in ("gif", "PNG", " svg"):
        error = assert_error(client.get(DIAGRAM, params={"format": bad}), 400, "invalid_input")
        assert error["details"][0]["field"] == "format"


def test_svg_and_png_without_graphviz_are_a_clear_501_and_text_formats_still_work(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "no-graphviz"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for fmt in ("svg", "png"):
        error = assert_error(client.get(DIAGRAM, params={"format": fmt}), 501, "graphviz_missing")
        assert "Graphviz" in error["message"] and "mermaid" in error["message"].lower()
    assert client.get(DIAGRAM, params={"format": "mermaid"}).status_code == 200


async def test_graphviz_runs_once_per_distinct_diagram_however_many_ask_at_once(
    tmp_path: Path, graphviz_runs: Callable[[], int]
) -> None:
    """Twelve clients asking for the SVG at once share one render; later requests are
    served the kept diagram; another format is another diagram."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'flows.db'}")
    async with AsyncTestClient(create_app(settings, hasher=Argon2Hasher.for_tests())) as client:
        answers = await asyncio.gather(
            *(client.get(DIAGRAM, params={"format": "svg"}) for _ in range(12))
        )
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1
        assert graphviz_runs() == 1
        for _ in range(3):
            assert (await client.get(DIAGRAM, params={"format": "png"})).status_code == 200
        assert (await client.get(DIAGRAM, params={"format": "svg"})).content == answers[0].content
        assert graphviz_runs() == 2
