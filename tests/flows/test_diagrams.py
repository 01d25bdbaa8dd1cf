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
    """Regenerating every version of every flow reproduces the committed .mmd and .dot byte
    for byte: the newest version as `<flow>.*`, each older one as `<flow>.v<N>.*`."""
    written = diagrams.write_diagrams(flows.registry(), tmp_path)
    texts = [p for p in written if p.suffix in (".mmd", ".dot")]
    assert {p.name for p in texts} >= {
        "password_recovery.mmd",
        "password_recovery.dot",
        "password_recovery.v1.mmd",
        "password_recovery.v1.dot",
    }
    for fresh in texts:
        committed = COMMITTED / fresh.name
        assert committed.exists(), f"{committed.name} missing. {STALE}"
        assert committed.read_bytes() == fresh.read_bytes(), f"{fresh.name} differs. {STALE}"
    # Nothing committed that no registered version draws any more.
    drawn = {p.stem for p in texts}
    for path in COMMITTED.iterdir():
        assert path.name.rsplit(".", 1)[0] in drawn, f"{path.name} is left over. {STALE}"


def test_committed_svg_exists_for_every_flow_version() -> None:
    """Each registered version of each flow has a committed SVG beside its Mermaid and DOT."""
    registry = flows.registry()
    for spec in registry.all_versions():
        stem = diagrams.diagram_stem(registry, spec)
        assert (COMMITTED / f"{stem}.svg").read_bytes().startswith(b"<?xml"), STALE


def test_version_1_is_drawn_as_it_was_and_version_2_adds_only_the_code() -> None:
    """The two diagrams differ by the two `enter_code` arrows, nothing else."""
    v1 = (COMMITTED / "password_recovery.v1.mmd").read_text().splitlines()
    v2 = (COMMITTED / "password_recovery.mmd").read_text().splitlines()
    assert [line for line in v2 if line not in v1] == [
        "    emailed --> link_opened : enter_code [code_right, link_live] / keep_the_code_token",
        "    link_opened --> link_opened : enter_code [code_right, link_live] / "
        "keep_the_code_token",
    ]
    assert [line for line in v1 if line not in v2] == []
