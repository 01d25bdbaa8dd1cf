"""The README tells the truth: its figures, commands and settings are the code's and the runs'.

Figures are written into the README from the committed `bench/results.json`
and `bench/chaos.json` (`bench/readme.py`); these tests render them again and
compare, check the two Quick start commands and that CI runs the second, and
that the Configuration and Command line sections name exactly what exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from api.cli import build_parser
from api.settings import Settings
from bench import readme

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_every_figure_block_is_rendered_from_the_committed_results() -> None:
    """The benchmark table and the chaos accounting are exactly what the committed JSON says."""
    assert readme.rendered(README) == README
    assert "<!-- figures:bench -->" in README and "<!-- figures:chaos -->" in README


def test_the_quick_start_holds_the_two_commands_and_ci_runs_the_test_one() -> None:
    """One command serves, one sets up and runs the tests; `.ci/run` runs that second one."""
    block = _section("Quick start").split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert commands[0].endswith("recovery serve")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines()


def test_the_configuration_table_names_every_setting_and_only_those() -> None:
    """Each `RECOVERY_*` variable in the table is a setting, with its default, and each
    setting is in the table."""
    rows = re.findall(r"^\| `(RECOVERY_\w+)` \| ([^|]*) \|", _section("Configuration"), re.M)
    documented = {name: default.strip() for name, default in rows}
    fields = {f"RECOVERY_{name.upper()}": info for name, info in Settings.model_fields.items()}
    assert set(documented) == set(fields)
    for name, info in fields.items():
        default = info.default
        if default is None or (isinstance(default, tuple) and not default):
            continue
        shown = documented[name].strip("`")
        assert shown == str(default), (name, shown, default)


def test_every_command_the_readme_lists_exists() -> None:
    """Each `recovery ...` form in the Command line table parses (its subcommands exist)."""
    forms = re.findall(r"^\| `recovery ([a-z-]+(?: [a-z-]+)?)", _section("Command line"), re.M)
    assert len(forms) >= 9
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for form in forms:
        command, *action = form.split()
        assert command in commands, form
        if action and not action[0].startswith("-"):
            sub = commands[command]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
            assert action[0] in sub, form
