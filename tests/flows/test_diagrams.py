"""The committed diagrams/ are what `recovery diagrams` makes from the registered flows today.

(How diagrams are drawn is the engine's: tests/engine/test_diagrams.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import flows
from engine import diagrams
from engine.flow import FlowSpec

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
