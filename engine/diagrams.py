"""Diagrams of flows: Mermaid and DOT text, and SVG or PNG rendered by Graphviz.

Generated from `FlowSpec.transitions` rather than python-statemachine's own
renderers, because its DOT output embeds `id()` values and so differs between
runs: here the same flow (and the same attempt) always gives byte-identical
text, which lets a test compare the committed `diagrams/` with the code.

An attempt's diagram highlights its current state, the states it went
through, and the arrows it took, numbered in the order it took them; `path`
is its accepted transitions as `(from, event, to)` triples, where a `from` of
None stands for the attempt's creation (the arrow into the initial state).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from engine.errors import GraphvizMissing
from engine.flow import FlowRegistry, FlowSpec, Transition
from engine.records import EventRecord

PathStep = tuple[str | None, str, str]

# Colours chosen to stay readable when printed in grey.
CURRENT_FILL = "#ffd54f"
CURRENT_STROKE = "#e65100"
VISITED_FILL = "#c8e6c9"
VISITED_STROKE = "#2e7d32"
PATH_EDGE = "#2e7d32"
INITIAL = "__initial__"
GRAPHVIZ_TIMEOUT_S = 30


def path_of(history: Iterable[EventRecord]) -> list[PathStep]:
    """An attempt's path for a diagram: its accepted events, creation included, in order."""
    return [
        (e.from_state, e.event, e.to_state)
        for e in history
        if e.accepted and e.to_state is not None
    ]


@dataclass(frozen=True)
class _Highlight:
    """What an attempt's diagram emphasises, resolved against its flow."""

    current: str | None
    visited: frozenset[str]
    steps: dict[tuple[str, str, str], list[int]]
    started: bool


def _resolve(spec: FlowSpec, current: str | None, path: Sequence[PathStep]) -> _Highlight:
    """Check `current` and `path` against the flow; refuse anything it does not define."""
    if current is not None and current not in spec.states:
        raise ValueError(f"flow {spec.name!r} has no state {current!r}")
    arrows = {(t.source, t.event, t.target) for t in spec.transitions}
    steps: dict[tuple[str, str, str], list[int]] = {}
    visited: set[str] = set()
    started = False
    number = 0
    for source, event, target in path:
        if source is None:
            if target != spec.initial_state:
                raise ValueError(
                    f"flow {spec.name!r} starts in {spec.initial_state!r}, not {target!r}"
                )
            started = True
            visited.add(target)
            continue
        if (source, event, target) not in arrows:
            raise ValueError(
                f"flow {spec.name!r} has no transition {source!r} --{event}--> {target!r}"
            )
        number += 1
        steps.setdefault((source, event, target), []).append(number)
        visited.update((source, target))
    visited.discard(current or "")
    return _Highlight(current, frozenset(visited), steps, started)


def _duration(after: timedelta) -> str:
    """A short exact duration: 1d, 1h, 90min, 45s."""
    seconds = int(after.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _label(spec: FlowSpec, t: Transition, numbers: Sequence[int]) -> str:
    """An arrow's text, in UML's order: event, [guards], / effects, then the deadline that
    fires it and the steps that took it."""
    label = t.event
    if t.guards:
        label += f" [{', '.join(t.guards)}]"
    if t.effects:
        label += f" / {', '.join(t.effects)}"
    deadline = spec.deadlines.get(t.source)
    if deadline is not None and deadline.event == t.event:
        kept = ", not restarted" if not deadline.restart else ""
        after = _duration(deadline.fixed) if deadline.fixed is not None else "a computed time"
        label += f" (after {after}{kept})"
    if numbers:
        label += f" ({', '.join(str(n) for n in numbers)})"
    # Mermaid ends a statement at a newline or ';'; neither belongs in a label.
    return label.replace("\n", " ").replace("\r", " ").replace(";", ",")


def mermaid(spec: FlowSpec, *, current: str | None = None, path: Sequence[PathStep] = ()) -> str:
    """The flow as a Mermaid state diagram, with an attempt's state and path highlighted."""
    hl = _resolve(spec, current, path)
    lines = ["stateDiagram-v2", "    direction LR", f"    [*] --> {spec.initial_state}"]
    for t in spec.transitions:
        numbers = hl.steps.get((t.source, t.event, t.target), [])
        lines.append(f"    {t.source} --> {t.target} : {_label(spec, t, numbers)}")
    lines.extend(f"    {state} --> [*]" for state in spec.final_states)
    if hl.visited:
        lines.append(f"    classDef visited fill:{VISITED_FILL},stroke:{VISITED_STROKE}")
        lines.append(f"    class {','.join(s for s in spec.states if s in hl.visited)} visited")
    if hl.current is not None:
        lines.append(
            f"    classDef current fill:{CURRENT_FILL},stroke:{CURRENT_STROKE},stroke-width:3px"
        )
        lines.append(f"    class {hl.current} current")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(spec: FlowSpec, *, current: str | None = None, path: Sequence[PathStep] = ()) -> str:
    """The flow as Graphviz DOT, with an attempt's state and path highlighted."""
    hl = _resolve(spec, current, path)
    title = f"{spec.name} (version {spec.version})"
    lines = [
        f"digraph {_q(spec.name)} {{",
        f"    graph [rankdir=LR, label={_q(title)}, labelloc=t, fontname=Helvetica];",
        '    node [shape=box, style="rounded,filled", fillcolor=white, fontname=Helvetica];',
        "    edge [fontname=Helvetica, fontsize=10];",
        f'    {_q(INITIAL)} [shape=point, width=0.15, label=""];',
    ]
    finals = set(spec.final_states)
    for state in spec.states:
        attrs = [f"label={_q(state)}"]
        if state in finals:
            attrs.append("peripheries=2")
        if state == hl.current:
            attrs += [f"fillcolor={_q(CURRENT_FILL)}", f"color={_q(CURRENT_STROKE)}", "penwidth=3"]
        elif state in hl.visited:
            attrs += [f"fillcolor={_q(VISITED_FILL)}", f"color={_q(VISITED_STROKE)}"]
        lines.append(f"    {_q(state)} [{', '.join(attrs)}];")
    start = f" [color={_q(PATH_EDGE)}, penwidth=2.5]" if hl.started else ""
    lines.append(f"    {_q(INITIAL)} -> {_q(spec.initial_state)}{start};")
    for t in spec.transitions:
        numbers = hl.steps.get((t.source, t.event, t.target), [])
        attrs = [f"label={_q(_label(spec, t, numbers))}"]
        if numbers:
            attrs += [f"color={_q(PATH_EDGE)}", f"fontcolor={_q(PATH_EDGE)}", "penwidth=2.5"]
        lines.append(f"    {_q(t.source)} -> {_q(t.target)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graphviz_available() -> bool:
    """Whether Graphviz's `dot` program is on PATH (looked up now, not at import)."""
    return shutil.which("dot") is not None


def _render(source: str, fmt: str) -> bytes:
    program = shutil.which("dot")
    if program is None:
        raise GraphvizMissing("dot")
    try:
        done = subprocess.run(
            [program, f"-T{fmt}"],
            input=source.encode(),
            capture_output=True,
            check=False,
            timeout=GRAPHVIZ_TIMEOUT_S,
        )
    except FileNotFoundError:
        # Removed between the lookup and the call.
        raise GraphvizMissing("dot") from None
    if done.returncode != 0:
        raise RuntimeError(f"Graphviz failed to render {fmt}: {done.stderr.decode()[:500]}")
    return done.stdout


def svg(spec: FlowSpec, *, current: str | None = None, path: Sequence[PathStep] = ()) -> bytes:
    """The DOT diagram rendered to SVG by Graphviz (`GraphvizMissing` without it)."""
    return _render(dot(spec, current=current, path=path), "svg")


def png(spec: FlowSpec, *, current: str | None = None, path: Sequence[PathStep] = ()) -> bytes:
    """The DOT diagram rendered to PNG by Graphviz (`GraphvizMissing` without it)."""
    return _render(dot(spec, current=current, path=path), "png")


def diagram_stem(registry: FlowRegistry, spec: FlowSpec) -> str:
    """The file name (without suffix) of a flow version's diagrams: `<flow>` for the
    newest version, `<flow>.v<N>` for each older one still registered."""
    newest = registry.get(spec.name)
    return spec.name if spec.version == newest.version else f"{spec.name}.v{spec.version}"


def write_diagrams(registry: FlowRegistry, out_dir: Path) -> list[Path]:
    """Write `.mmd` and `.dot` for every registered version of every flow, and `.svg`
    with Graphviz, named by `diagram_stem` (the newest keeps `<flow>.mmd`).

    Returns the files written, in order. Text is written with LF line endings
    on every platform so the committed files compare byte for byte.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with_svg = graphviz_available()
    written: list[Path] = []
    for spec in registry.all_versions():
        outputs: list[tuple[str, bytes]] = [
            ("mmd", mermaid(spec).encode()),
            ("dot", dot(spec).encode()),
        ]
        if with_svg:
            outputs.append(("svg", svg(spec)))
        stem = diagram_stem(registry, spec)
        for suffix, content in outputs:
            target = out_dir / f"{stem}.{suffix}"
            target.write_bytes(content)
            written.append(target)
    return written
