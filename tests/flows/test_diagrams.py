"""Flow diagrams: the committed files match the code, attempts show their path, output is stable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import flows
from engine import Database, Engine, EventRefused, GraphvizMissing, diagrams
from engine.flow import FlowSpec
from tests.support.tools import require

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "diagrams"
STALE = "diagrams/ is out of date with the flow definitions: run `recovery diagrams` and commit"


@pytest.fixture
def spec() -> FlowSpec:
    return flows.registry().get("password_recovery")


def _class_members(text: str, name: str) -> set[str]:
    """The states a Mermaid `class a,b name` line puts in class `name`."""
    found = re.findall(rf"^    class (\S+) {name}$", text, flags=re.MULTILINE)
    return {state for line in found for state in line.split(",")}


def test_committed_diagrams_match_the_flow_definitions(tmp_path: Path) -> None:
    """Regenerating every flow's diagrams reproduces the committed .mmd and .dot byte for byte."""
    written = diagrams.write_diagrams(flows.registry(), tmp_path)
    texts = [p for p in written if p.suffix in (".mmd", ".dot")]
    assert {p.name for p in texts} >= {"password_recovery.mmd", "password_recovery.dot"}
    for fresh in texts:
        committed = COMMITTED / fresh.name
        assert committed.exists(), f"{committed.name} missing. {STALE}"
        assert committed.read_bytes() == fresh.read_bytes(), f"{fresh.name} differs. {STALE}"


def test_committed_svg_exists_for_every_flow() -> None:
    """Each registered flow has a committed SVG beside its Mermaid and DOT files."""
    for spec in flows.registry():
        assert (COMMITTED / f"{spec.name}.svg").read_bytes().startswith(b"<?xml"), STALE


def test_plain_diagram_draws_every_transition_and_highlights_nothing(spec: FlowSpec) -> None:
    """Without an attempt, the diagram has one arrow per transition and no highlighted state."""
    text = diagrams.mermaid(spec)
    for t in spec.transitions:
        assert re.search(rf"^    {t.source} --> {t.target} : {t.event}\b", text, re.MULTILINE)
    assert f"    [*] --> {spec.initial_state}\n" in text
    for final in spec.final_states:
        assert f"    {final} --> [*]\n" in text
    assert "class " not in text


def test_attempt_diagram_highlights_current_state_and_numbered_path(
    database: Database, spec: FlowSpec
) -> None:
    """A real attempt's diagram marks its current state, the states it passed, and its steps."""
    engine = Engine(database, flows.registry())
    attempt = engine.start_sync("password_recovery", subject="someone")
    engine.fire_sync(attempt.id, "dispatch", params={"account_exists": True, "mail_accepted": True})
    engine.fire_sync(attempt.id, "open_link", params={"token_valid": True})
    engine.fire_sync(attempt.id, "open_link", params={"token_valid": True})
    with pytest.raises(EventRefused, match="wrong_state"):
        engine.fire_sync(attempt.id, "log_in", params={"signed_in": True})
    current = engine.get_sync(attempt.id).state
    path = diagrams.path_of(engine.history_sync(attempt.id))

    assert path == [
        (None, "start", "requested"),
        ("requested", "dispatch", "emailed"),
        ("emailed", "open_link", "link_opened"),
        ("link_opened", "open_link", "link_opened"),
    ]
    text = diagrams.mermaid(spec, current=current, path=path)
    assert _class_members(text, "current") == {"link_opened"}
    assert _class_members(text, "visited") == {"requested", "emailed"}
    assert "requested --> emailed : dispatch [mail_accepted] (1)\n" in text
    assert "emailed --> link_opened : open_link [token_valid] (2)\n" in text
    assert "link_opened --> link_opened : open_link [token_valid] (3)\n" in text
    assert "requested --> throttled : dispatch [over_limit]\n" in text

    graph = diagrams.dot(spec, current=current, path=path)
    assert re.search(r'^    "link_opened" \[.*fillcolor="#ffd54f"', graph, re.MULTILINE)
    assert re.search(r'^    "emailed" \[.*fillcolor="#c8e6c9"', graph, re.MULTILINE)
    assert not re.search(r'^    "password_set" \[.*fillcolor="#', graph, re.MULTILINE)
    taken = re.findall(r'^    "(\w+)" -> "(\w+)" \[.*penwidth=2.5', graph, re.MULTILINE)
    assert taken == [
        ("__initial__", "requested"),
        ("requested", "emailed"),
        ("emailed", "link_opened"),
        ("link_opened", "link_opened"),
    ]


def test_a_path_or_state_outside_the_flow_is_refused_clearly(spec: FlowSpec) -> None:
    """Asking to highlight a transition or state the flow lacks raises a ValueError naming it."""
    with pytest.raises(ValueError, match="no transition 'requested' --open_link--> 'emailed'"):
        diagrams.mermaid(spec, path=[("requested", "open_link", "emailed")])
    with pytest.raises(ValueError, match="no state 'limbo'"):
        diagrams.dot(spec, current="limbo")
    with pytest.raises(ValueError, match="starts in 'requested'"):
        diagrams.dot(spec, path=[(None, "start", "emailed")])


def test_text_diagrams_are_deterministic(spec: FlowSpec) -> None:
    """The same flow and attempt give byte-identical Mermaid and DOT every time."""
    path = [(None, "start", "requested"), ("requested", "dispatch", "emailed")]
    again = flows.registry().get("password_recovery")
    assert diagrams.mermaid(spec, current="emailed", path=path) == diagrams.mermaid(
        again, current="emailed", path=path
    )
    assert diagrams.dot(spec, current="emailed", path=path) == diagrams.dot(
        again, current="emailed", path=path
    )


def test_svg_is_deterministic_and_names_every_state(spec: FlowSpec) -> None:
    """Graphviz renders the same SVG twice, with a node titled by each state."""
    require("graphviz")
    first = diagrams.svg(spec, current="emailed")
    assert first == diagrams.svg(spec, current="emailed")
    titles = set(re.findall(rb"<title>(\w+)</title>", first))
    assert {s.encode() for s in spec.states} <= titles


def test_png_is_a_png(spec: FlowSpec) -> None:
    """PNG rendering gives PNG bytes."""
    require("graphviz")
    assert diagrams.png(spec).startswith(b"\x89PNG\r\n\x1a\n")


def test_without_graphviz_svg_raises_and_text_diagrams_still_write(
    spec: FlowSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no `dot` on PATH, SVG and PNG raise GraphvizMissing; write_diagrams skips the SVG."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(GraphvizMissing, match="Graphviz") as raised:
        diagrams.svg(spec)
    assert raised.value.code == "graphviz_missing"
    with pytest.raises(GraphvizMissing):
        diagrams.png(spec)
    written = diagrams.write_diagrams(flows.registry(), tmp_path / "out")
    assert sorted(p.name for p in written) == ["password_recovery.dot", "password_recovery.mmd"]
