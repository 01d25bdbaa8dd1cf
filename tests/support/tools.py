"""The programs outside Python that the suite and the benchmarks need, and how to get them.

One table for everyone: `scripts/test.py` installs the missing ones before
the run (with apt-get, when it runs as root), the tests that need one call
`require(name)`, and `python -m bench` checks the ones its sections use.
A missing program skips the test with the install command as its reason,
except under `CI=true`, where it is a failure: CI must run everything.

Standard library only: the setup script imports this before any virtual
environment exists.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PG_BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14", "13")]


def find_pg_bin() -> Path | None:
    """The directory holding PostgreSQL's `initdb` and `pg_ctl`, or None."""
    for candidate in PG_BIN_DIRS:
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def find_chromium() -> Path | None:
    """Debian's Chromium (never a browser a test tool downloaded)."""
    found = shutil.which("chromium")
    if found:
        return Path(found)
    default = Path("/usr/bin/chromium")
    return default if default.exists() else None


def _on_path(program: str) -> Callable[[], Path | None]:
    def find() -> Path | None:
        found = shutil.which(program)
        return Path(found) if found else None

    return find


@dataclass(frozen=True)
class Tool:
    """A program the tests need: what it is, how to find it, which Debian package has it."""

    name: str
    what: str
    package: str
    find: Callable[[], Path | None]

    def present(self) -> bool:
        return self.find() is not None


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("postgresql", "the PostgreSQL server (initdb, pg_ctl)", "postgresql", find_pg_bin),
        Tool("graphviz", "Graphviz's dot", "graphviz", _on_path("dot")),
        Tool("chromium", "Debian's Chromium", "chromium", find_chromium),
        Tool("redis", "redis-server", "redis-server", _on_path("redis-server")),
        Tool("wrk", "the HTTP load generator wrk", "wrk", _on_path("wrk")),
    )
}


def in_ci() -> bool:
    """Whether this run is CI's (CI=true), where every tool is required."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def install_command(packages: Iterable[str]) -> str:
    """The one command that installs `packages` on Debian or Ubuntu, as this user can run it."""
    names = " ".join(sorted(set(packages)))
    prefix = "" if os.geteuid() == 0 else "sudo "
    return f"{prefix}apt-get install -y {names}"


def missing(names: Iterable[str] = TOOLS) -> list[Tool]:
    """The tools among `names` that are not installed, in table order."""
    wanted = set(names)
    return [tool for name, tool in TOOLS.items() if name in wanted and not tool.present()]


def reason(tool: Tool) -> str:
    """Why a test cannot run without `tool`, ending with the command that fixes it."""
    return f"{tool.what} is not installed: {install_command([tool.package])}"


def require(name: str) -> Path:
    """The tool's path; otherwise skip the calling test (fail it under CI=true)."""
    import pytest  # only tests call this; the setup script runs before pytest exists

    tool = TOOLS[name]
    found = tool.find()
    if found is not None:
        return found
    if in_ci():
        pytest.fail(f"{reason(tool)} (CI=true requires it)")
    pytest.skip(reason(tool))
