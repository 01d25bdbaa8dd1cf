"""The README's figures, written from the committed results of the latest full runs.

`python -m bench` (full run) and `python -m bench.chaos` rewrite, in
`README.md`, the blocks between `<!-- figures:NAME -->` and
`<!-- /figures:NAME -->` from `bench/results.json` and `bench/chaos.json`;
a test renders them again from the committed JSON and compares, so the README
never quotes a number that the latest run did not produce.

    python -m bench.readme            # rewrite the blocks from the committed JSON
    python -m bench.readme --check    # exit 1 if the README is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
RESULTS = HERE / "results.json"
CHAOS = HERE / "chaos.json"


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if not unit:
        return text
    return f"{text}{unit}" if unit == "x" else f"{text} {unit}"


def benchmark_block(results: Mapping[str, Any]) -> str:
    """The table of every figure of a full run: value, floor, ratio, target, met."""
    machine = results.get("machine", {})
    lines = [
        f"Last full run: {results.get('date', '?')[:10]}, {results.get('elapsed_s', 0):.0f} s, "
        f"{machine.get('cores', '?')} cores ({machine.get('cpu', '?')}), "
        f"SQLite {machine.get('sqlite', '?')}, "
        f"PostgreSQL {str(machine.get('postgresql', '?')).split(' ')[0]}.",
        "",
        "| figure | value | floor (same run) | ratio | target | met |",
        "|---|---:|---|---:|---|---|",
    ]
    for name, figure in results.get("figures", {}).items():
        floor = figure.get("floor")
        floor_text = f"{_number(floor['value'], floor['unit'])}: {floor['what']}" if floor else ""
        ratio = (figure.get("ratio_to_floor") or {}).get("value")
        met = {True: "yes", False: "**no**", None: ""}[figure.get("met")]
        target = figure.get("target", "")
        lines.append(
            f"| `{name}` | {_number(figure.get('value'), figure.get('unit', ''))} | "
            f"{floor_text} | {_number(ratio, 'x') if ratio is not None and floor else ''} | "
            f"{'' if target.startswith('none') else target} | {met} |"
        )
    return "\n".join(lines)


def chaos_block(chaos: Mapping[str, Any]) -> str:
    """The accounting of the latest chaos run, as `python -m bench.chaos` prints it."""
    details = chaos.get("details", {})
    requests = details.get("requests", {})
    faults = details.get("faults", [])
    latency = requests.get("accepted_latency_ms", {})
    left = details.get("claims_left_by_the_killed_dispatcher", {})
    lines = ["```"]
    for fault in faults:
        extra = {k: v for k, v in fault.items() if k not in ("t", "what", "apis")}
        lines.append(f"  [{fault['t']:8.2f}s] {fault['what']}" + (f" {extra}" if extra else ""))
    lines += [
        "accounting",
        f"  accepted         {chaos.get('accepted')} of {requests.get('sent')} requests "
        f"({requests.get('retried_requests', 0)} retried by the client, "
        f"{requests.get('never_accepted', 0)} never accepted)",
        f"  attempts         {chaos.get('attempts')}",
        f"  lost             {chaos.get('lost')}",
        f"  stuck            {chaos.get('stuck')}",
        f"  duplicates       {chaos.get('duplicates')}"
        + (
            f" by fault {details['duplicates_by_fault']}"
            if details.get("duplicates_by_fault")
            else ""
        ),
        f"  wrong_recipient  {chaos.get('wrong_recipient')}",
        f"  unexplained      {details.get('unexplained_by_history', 0)}",
        f"  accepted states  {details.get('accepted_by_state', {})}",
        f"  mails received   {details.get('mails_received')}; "
        f"{details.get('mail_delivery', {}).get('attempts_mailed_after_a_failed_try', 0)} attempts "
        "needed a retry",
        f"  failed tries     {requests.get('failed_tries_by_outcome', {})}; accepted p50 "
        f"{latency.get('p50')} ms, p99 {latency.get('p99')} ms",
        f"  killed dispatcher left {left.get('count', 0)} claims, which ended "
        f"{left.get('final_states', {})}",
        f"  drained          {details.get('drained')} in {details.get('drain_seconds')} s; "
        f"run {details.get('run_seconds')} s",
        "```",
    ]
    return "\n".join(lines)


BLOCKS: dict[str, tuple[Path, Callable[[Mapping[str, Any]], str]]] = {
    "bench": (RESULTS, benchmark_block),
    "chaos": (CHAOS, chaos_block),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)", re.DOTALL)


def rendered(readme: str, names: tuple[str, ...] = tuple(BLOCKS)) -> str:
    """`readme` with each named block rendered from its committed JSON."""
    for name in names:
        source, render = BLOCKS[name]
        block = render(json.loads(source.read_text(encoding="utf-8")))
        pattern = _pattern(name)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no <!-- figures:{name} --> block")
        readme = pattern.sub(lambda m, b=block: m.group(1) + b + "\n" + m.group(2), readme)
    return readme


def update(names: tuple[str, ...] = tuple(BLOCKS)) -> bool:
    """Rewrite the README's blocks; whether anything changed."""
    before = README.read_text(encoding="utf-8")
    after = rendered(before, names)
    if after != before:
        README.write_text(after, encoding="utf-8")
    return after != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        current = README.read_text(encoding="utf-8")
        if rendered(current) != current:
            print("README.md figures are out of date: run python -m bench.readme", file=sys.stderr)
            return 1
        return 0
    print("README.md updated" if update() else "README.md already current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
