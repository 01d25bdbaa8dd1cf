"""Diagrams of a flow: every arrow drawn with its guards and effects, an attempt's state and
numbered path highlighted, byte-stable text, and Graphviz rendering (or a clear refusal)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import Database, Engine, EventRefused, FlowRegistry, GraphvizMissing, diagrams
from engine.flow import FlowSpec
from tests.engine import ticket
from tests.engine.ticket import HOLD, OFFER
from tests.support.tools import require


@pytest.fixture
def spec() -> FlowSpec:
    return ticket.spec()


def _class_members(text: str, name: str) -> set[str]:
    """The states a Mermaid `class a,b name` line puts in class `name`."""
    found = re.findall(rf"^    class (\S+) {name}$", text, flags=re.MULTILINE)
    return {state for line in found for state in line.split(",")}


def test_plain_diagram_draws_every_transition_and_highlights_nothing(spec: FlowSpec) -> None:
    """Without an attempt, the diagram has one arrow per transition and no highlighted state."""
    text = diagrams.mermaid(spec)
    for t in spec.transitions:
        assert re.search(rf"^    {t.source} --> {t.target} : {t.event}\b", text, re.MULTILINE)
    assert f"    [*] --> {spec.initial_state}\n" in text
    for final in spec.final_states:
        assert f"    {final} --> [*]\n" in text
    assert "class " not in text


def test_each_arrow_says_its_guards_its_effects_and_the_deadline_that_fires_it(
    spec: FlowSpec,
) -> None:
    """UML's order: event [guards] / effects, then (after the deadline)."""
    text = diagrams.mermaid(spec)
    assert "    held --> paid : pay [code_ok, card_ok] / charge\n" in text
    assert "    held --> lapsed : lapse / release_seat (after 1h, not restarted)\n" in text
    assert "    queued --> waitlisted : offer [full]\n" in text


def test_an_attempts_diagram_highlights_its_state_and_numbered_path(
    database: Database, spec: FlowSpec
) -> None:
    """A real attempt's diagram marks its current state, the states it passed, and its steps."""
    engine = Engine(database, [spec])
    attempt = engine.start_sync(ticket.NAME, subject="someone")
    engine.fire_sync(attempt.id, "offer", params=OFFER)
    engine.fire_sync(attempt.id, "hold", params=HOLD)
    engine.fire_sync(attempt.id, "hold", params=HOLD)
    with pytest.raises(EventRefused, match="wrong_state"):
        engine.fire_sync(attempt.id, "sit", params={"at_gate": True})
    current = engine.get_sync(attempt.id).state
    path = diagrams.path_of(engine.history_sync(attempt.id))

    assert path == [
        (None, "start", "queued"),
        ("queued", "offer", "offered"),
        ("offered", "hold", "held"),
        ("held", "hold", "held"),
    ]
    text = diagrams.mermaid(spec, current=current, path=path)
    assert _class_members(text, "current") == {"held"}
    assert _class_members(text, "visited") == {"queued", "offered"}
    assert "queued --> offered : offer [seat_free] (1)\n" in text
    assert "offered --> held : hold [code_ok] (2)\n" in text
    assert "held --> held : hold [code_ok] (3)\n" in text
    assert "queued --> waitlisted : offer [full]\n" in text

    graph = diagrams.dot(spec, current=current, path=path)
    assert re.search(r'^    "held" \[.*fillcolor="#ffd54f"', graph, re.MULTILINE)
    assert re.search(r'^    "offered" \[.*fillcolor="#c8e6c9"', graph, re.MULTILINE)
    assert not re.search(r'^    "paid" \[.*fillcolor="#', graph, re.MULTILINE)
    taken = re.findall(r'^    "(\w+)" -> "(\w+)" \[.*penwidth=2.5', graph, re.MULTILINE)
    assert taken == [
        ("__initial__", "queued"),
        ("queued", "offered"),
        ("offered", "held"),
        ("held", "held"),
    ]


def test_a_path_or_state_outside_the_flow_is_refused_clearly(spec: FlowSpec) -> None:
    """Asking to highlight a transition or state the flow lacks raises a ValueError naming it."""
    with pytest.raises(ValueError, match="no transition 'queued' --hold--> 'offered'"):
        diagrams.mermaid(spec, path=[("queued", "hold", "offered")])
    with pytest.raises(ValueError, match="no state 'limbo'"):
        diagrams.dot(spec, current="limbo")
    with pytest.raises(ValueError, match="starts in 'queued'"):
        diagrams.dot(spec, path=[(None, "start", "offered")])


def test_text_diagrams_are_deterministic(spec: FlowSpec) -> None:
    """The same flow and attempt give byte-identical Mermaid and DOT every time."""
    path = [(None, "start", "queued"), ("queued", "offer", "offered")]
    again = ticket.spec()
    assert diagrams.mermaid(spec, current="offered", path=path) == diagrams.mermaid(
        again, current="offered", path=path
    )
    assert diagrams.dot(spec, current="offered", path=path) == diagrams.dot(
        again, current="offered", path=path
    )


def test_svg_is_deterministic_and_names_every_state(spec: FlowSpec) -> None:
    """Graphviz renders the same SVG twice, with a node titled by each state."""
    require("graphviz")
    first = diagrams.svg(spec, current="offered")
    assert first == diagrams.svg(spec, current="offered")
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
    written = diagrams.write_diagrams(FlowRegistry([spec]), tmp_path / "out")
    assert sorted(p.name for p in written) == ["ticket.dot", "ticket.mmd"]


def test_every_registered_version_is_written_the_newest_under_the_flows_own_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two versions registered: `<flow>.mmd` is the newest, `<flow>.v1.mmd` the older one,
    each its own version's diagram."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    both = FlowRegistry([ticket.spec(1), ticket.spec(2)])
    written = diagrams.write_diagrams(both, tmp_path / "out")
    assert [p.name for p in written] == [
        "ticket.v1.mmd",
        "ticket.v1.dot",
        "ticket.mmd",
        "ticket.dot",
    ]
    assert (tmp_path / "out" / "ticket.mmd").read_text() == diagrams.mermaid(ticket.spec(2))
    assert (tmp_path / "out" / "ticket.v1.dot").read_text() == diagrams.dot(ticket.spec(1))
    assert "(version 2)" in (tmp_path / "out" / "ticket.dot").read_text()
    assert diagrams.diagram_stem(both, ticket.spec(1)) == "ticket.v1"
    assert diagrams.diagram_stem(both, ticket.spec(2)) == "ticket"
