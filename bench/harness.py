"""The harness: figures, their statistics, the machine they ran on, and the reports.

A `Figure` is one named number with its unit, its target and the runs it is
the median of; a speed figure also carries its floor (the cheapest version of
the same work, measured in the same run) and the ratio to it, because a ratio
survives a noisy machine better than an absolute number. `write_results`
turns a list of figures into `results.json` (the fixed shape of issue 6) and
`RESULTS.md` (the same, for people, with the machine described).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

Better = Literal["lower", "higher"]


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values (a figure that could not be measured)."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float | None) -> float | None:
    """A readable number of significant digits; None for no number (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return 0.0
    digits = max(0, 4 - math.floor(math.log10(abs(value))))
    return round(value, digits)


class SectionSkipped(Exception):
    """A section that cannot run in this build or on this machine; the reason is reported."""


@dataclass
class Floor:
    """What a speed figure is compared with: the same work done the cheapest way."""

    what: str
    unit: str
    runs: list[float]

    @property
    def value(self) -> float:
        return median(self.runs)

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": _round(self.value),
            "unit": self.unit,
            "runs": [_round(r) for r in self.runs],
        }


@dataclass
class Figure:
    """One named benchmark result: the median of `runs`, with min-max, target and floor."""

    name: str
    unit: str
    runs: list[float]
    target: str = "none (reported)"
    # How to judge the target: lower or higher is better, against `threshold`.
    better: Better | None = None
    threshold: float | None = None
    inclusive: bool = True
    floor: Floor | None = None
    # Per-run ratio of this figure to its floor (same run, same order as `runs`).
    ratio_runs: list[float] = field(default_factory=list)
    description: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return median(self.runs)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None where there is no target or no value."""
        if self.better is None or self.threshold is None or not math.isfinite(self.value):
            return None
        if self.better == "lower":
            return self.value <= self.threshold if self.inclusive else self.value < self.threshold
        return self.value >= self.threshold if self.inclusive else self.value > self.threshold

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": _round(self.value),
            "unit": self.unit,
            "target": self.target,
            "runs": [_round(r) for r in self.runs],
            "min": _round(min(self.runs)) if self.runs else None,
            "max": _round(max(self.runs)) if self.runs else None,
            "met": self.met,
            "description": self.description,
        }
        if self.floor is not None:
            out["floor"] = self.floor.as_json()
        if self.ratio_runs:
            out["ratio_to_floor"] = {
                "value": _round(median(self.ratio_runs)),
                "runs": [_round(r) for r in self.ratio_runs],
            }
        if self.detail:
            out["detail"] = _jsonable(self.detail)
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is: full, or tiny for `--quick`."""

    quick: bool
    runs: int
    fires: int
    sweep_rows: int
    list_rows: int
    list_deep_page: int
    wrk_seconds: float
    enumeration_per_class: int
    hashing_seconds: float
    dispatch_emails: int
    # Issue 17: the request path against floors outside the product, and mail keeping up.
    # Addresses the wrk load cycles over (known ones have an account), per kind.
    request_addresses: int = 1000
    # Requests per kind (known, unknown) per run, one at a time.
    sequential_per_kind: int = 500
    # How long the open-loop load of the time-to-inbox figure lasts per run, and how
    # long its mail may take to drain afterwards before the rest counts as late.
    inbox_seconds: float = 60.0
    inbox_floor_seconds: float = 10.0
    inbox_drain_timeout_s: float = 180.0
    # Accounts `recovery reset-all` resets (the figure's name says 100k), and how many
    # times: one run of 100,000 is ~10 minutes of mail, so once, with a floor each side.
    reset_all_accounts: int = 100_000
    reset_all_runs: int = 1
    # Accounts one import brings in (issue 15).
    import_accounts: int = 10_000

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            quick=False,
            runs=3,
            fires=1000,
            sweep_rows=100_000,
            list_rows=1_000_000,
            list_deep_page=1000,
            wrk_seconds=8.0,
            enumeration_per_class=1000,
            hashing_seconds=8.0,
            dispatch_emails=1500,
        )

    @classmethod
    def tiny(cls) -> Sizes:
        # Still three runs: the JSON shape (median of runs, min-max) is what CI checks.
        return cls(
            quick=True,
            runs=3,
            fires=40,
            sweep_rows=500,
            list_rows=3000,
            list_deep_page=5,
            wrk_seconds=1.0,
            enumeration_per_class=15,
            hashing_seconds=1.0,
            dispatch_emails=20,
            request_addresses=200,
            sequential_per_kind=15,
            inbox_seconds=1.0,
            inbox_floor_seconds=1.0,
            inbox_drain_timeout_s=60.0,
            reset_all_accounts=200,
            reset_all_runs=3,
            import_accounts=300,
        )


# -- the machine -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def _tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else None


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_machine(postgresql_version: str | None) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python and the database and tool versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": _os_name(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgresql_version,
        "wrk": _tool_version(["wrk", "-v"]),
        "packages": {
            name: _package_version(name)
            for name in (
                "litestar",
                "uvicorn",
                "uvloop",
                "sqlalchemy",
                "psycopg",
                "python-statemachine",
                "argon2-cffi",
                "aiosmtplib",
            )
        },
    }


# -- reports -------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    rounded = _round(value)
    if abs(rounded) >= 100:
        return f"{rounded:,.0f}"
    return f"{rounded:g}"


def _met_mark(met: bool | None) -> str:
    return {True: "yes", False: "MISSED", None: "-"}[met]


def table(figures: Sequence[Figure]) -> str:
    """A plain-text table of the figures, for the terminal."""
    rows = [("figure", "value", "unit", "min-max", "ratio to floor", "target", "met")]
    for f in figures:
        ratio = _fmt(median(f.ratio_runs)) if f.ratio_runs else "-"
        span = f"{_fmt(min(f.runs))}-{_fmt(max(f.runs))}" if f.runs else "n/a"
        rows.append((f.name, _fmt(f.value), f.unit, span, ratio, f.target, _met_mark(f.met)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_json(
    figures: Sequence[Figure], machine: dict[str, Any], *, quick: bool, elapsed_s: float
) -> dict[str, Any]:
    """The document `bench/results.json` holds."""
    return {
        "machine": machine,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "elapsed_s": round(elapsed_s, 1),
        "figures": {f.name: f.as_json() for f in figures},
    }


def results_markdown(
    document: dict[str, Any], figures: Sequence[Figure], notes: Callable[[], str] | None = None
) -> str:
    """`bench/RESULTS.md`: the machine, the table with targets, and per-figure details."""
    m = document["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {document['date']} with `python -m bench"
        + (" --quick`" if document["mode"] == "quick" else "`")
        + f" in {document['elapsed_s']:.0f} s. Every figure is the median of"
        " at least three runs (min-max shown); speed figures also show their"
        " ratio to a floor measured in the same run.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores",
        f"- Memory: {m['memory_gib']} GiB",
        f"- OS: {m['os']}",
        f"- Python {m['python']}, SQLite {m['sqlite']}, PostgreSQL {m['postgresql'] or 'n/a'}",
        f"- wrk: {m['wrk'] or 'n/a'}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        "",
        "## Figures",
        "",
        "| figure | value | unit | min-max | ratio to floor | target | met |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for f in figures:
        ratio = _fmt(median(f.ratio_runs)) if f.ratio_runs else "-"
        span = f"{_fmt(min(f.runs))}-{_fmt(max(f.runs))}" if f.runs else "n/a"
        lines.append(
            f"| `{f.name}` | {_fmt(f.value)} | {f.unit} | {span} | {ratio} | {f.target} "
            f"| {_met_mark(f.met)} |"
        )
    lines += ["", "## What each figure measures", ""]
    for f in figures:
        lines.append(f"### `{f.name}`")
        lines.append("")
        if f.description:
            lines.append(f.description)
            lines.append("")
        lines.append(f"- runs: {', '.join(_fmt(r) for r in f.runs) or 'n/a'} {f.unit}")
        if f.floor is not None:
            lines.append(
                f"- floor ({f.floor.what}): {_fmt(f.floor.value)} {f.floor.unit}"
                f" (runs {', '.join(_fmt(r) for r in f.floor.runs)})"
            )
        if f.ratio_runs:
            lines.append(f"- ratio to floor per run: {', '.join(_fmt(r) for r in f.ratio_runs)}")
        for key, value in f.detail.items():
            lines.append(f"- {key}: {_detail_text(value)}")
        lines.append("")
    if notes is not None:
        lines.append(notes())
    return "\n".join(lines).rstrip() + "\n"


def _detail_text(value: Any) -> str:
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_detail_text(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_detail_text(v)}" for k, v in value.items())
    return str(value)


def write_results(
    out_dir: Path,
    figures: Sequence[Figure],
    machine: dict[str, Any],
    *,
    quick: bool,
    elapsed_s: float,
    notes: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Write `results.json` and `RESULTS.md` into `out_dir`; return the JSON document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    document = results_json(figures, machine, quick=quick, elapsed_s=elapsed_s)
    (out_dir / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(results_markdown(document, figures, notes))
    return document
