"""The tools the suite needs: a missing one skips with its install command, or fails in CI.

`scripts/test.py` (the README's test command) installs missing Debian
packages only as root; otherwise it prints the one command it could not run
and goes on. These tests run that logic with an empty PATH, so every tool
looks missing, without touching the machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import tools

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH with nothing on it, and no PostgreSQL or Chromium at their Debian paths."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(tools, "PG_BIN_DIRS", [tmp_path / "no-postgresql"])
    monkeypatch.setattr(tools, "find_chromium", lambda: None)
    monkeypatch.setitem(
        tools.TOOLS,
        "chromium",
        tools.Tool("chromium", "Debian's Chromium", "chromium", lambda: None),
    )


def _setup_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("setup_script", ROOT / "scripts" / "test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("nothing_installed")
def test_a_missing_tool_skips_with_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside CI, `require` skips, and the reason ends with the apt-get line for its package."""
    monkeypatch.delenv("CI", raising=False)
    for name, tool in tools.TOOLS.items():
        with pytest.raises(pytest.skip.Exception) as skipped:
            tools.require(name)
        assert str(skipped.value).endswith(f"apt-get install -y {tool.package}")


@pytest.mark.usefixtures("nothing_installed")
def test_under_ci_a_missing_tool_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true, a missing tool fails the test instead of skipping it."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y graphviz"):
        tools.require("graphviz")


def test_without_root_the_install_command_asks_for_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command shown to a user who is not root starts with sudo, once for all packages."""
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    assert (
        tools.install_command(["wrk", "graphviz", "wrk"]) == "sudo apt-get install -y graphviz wrk"
    )
    monkeypatch.setattr(tools.os, "geteuid", lambda: 0)
    assert tools.install_command(["wrk"]) == "apt-get install -y wrk"


@pytest.mark.usefixtures("nothing_installed")
def test_the_setup_script_without_root_prints_the_one_command_and_installs_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not root: scripts/test.py names every missing package in one command and runs nothing."""
    script = _setup_script()
    monkeypatch.setattr(script.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tools.os, "geteuid", lambda: 1000)
    ran: list[object] = []
    monkeypatch.setattr(script, "_run", lambda *a, **kw: ran.append(a))
    script.system_packages()
    out = capsys.readouterr().out
    assert ran == []
    [line] = [line for line in out.splitlines() if "apt-get" in line]
    assert line.endswith(
        "run: sudo apt-get install -y chromium graphviz postgresql redis-server wrk"
    )
    assert sys.modules.get("setup_script") is None


@pytest.mark.usefixtures("nothing_installed")
def test_bench_without_its_programs_says_in_one_line_what_to_install(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m bench` runs nothing when a program its sections need is missing: it names the
    programs and the one install command on one line, and exits 2."""
    from bench.__main__ import main

    assert main(["--quick", "--only", "http", "engine"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert "wrk" in line and "PostgreSQL" in line
    assert "apt-get install -y postgresql wrk" in line
