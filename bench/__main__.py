"""`python -m bench [--quick] [--only SECTION ...] [--out DIR]`: run benchmarks, write reports.

Sections run in a fixed order, each producing one or more figures; a section
that fails is reported (its figures are missing from the JSON, the error is
printed and named in RESULTS.md) and the others still run, so one broken
piece does not hide every other number. A section that cannot run in this
build raises `SectionSkipped` (`reset_all` until `recovery reset-all` exists):
it is printed as `== NAME skipped: REASON`, named in RESULTS.md, and is not a
failure. The exit status is 1 when a section failed, 0 otherwise; missed
targets are reported, not turned into failures.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import findings
from bench.env import BACKENDS, BenchEnv
from bench.harness import (
    Figure,
    SectionSkipped,
    Sizes,
    describe_machine,
    table,
    write_results,
)
from tests.support import tools

HERE = Path(__file__).resolve().parent
Section = Callable[[BenchEnv], list[Figure]]


def _engine(env: BenchEnv) -> list[Figure]:
    from bench import engine_overhead

    return [engine_overhead.measure(env, b) for b in _backends(env)]


def _sweep(env: BenchEnv) -> list[Figure]:
    from bench import sweep

    return [sweep.measure(env, b) for b in _backends(env)]


def _support_list(env: BenchEnv) -> list[Figure]:
    from bench import support_list

    return [support_list.measure(env, b) for b in _backends(env)]


def _http(env: BenchEnv) -> list[Figure]:
    from bench import http_load

    return http_load.measure(env)


def _request_path(env: BenchEnv) -> list[Figure]:
    from bench import request_path

    return request_path.measure(env)


def _enumeration(env: BenchEnv) -> list[Figure]:
    from bench import enumeration

    return enumeration.measure(env)


def _code_enumeration(env: BenchEnv) -> list[Figure]:
    from bench import code_enumeration

    return code_enumeration.measure(env)


def _enumeration_sending(env: BenchEnv) -> list[Figure]:
    from bench import enumeration_sending

    return enumeration_sending.measure(env)


def _hashing(env: BenchEnv) -> list[Figure]:
    from bench import hashing

    return [hashing.measure(env), hashing.measure_dummy_verify(env)]


def _dispatch(env: BenchEnv) -> list[Figure]:
    from bench import dispatch

    return dispatch.measure(env)


def _inbox(env: BenchEnv) -> list[Figure]:
    from bench import time_to_inbox

    return time_to_inbox.measure(env)


def _importing(env: BenchEnv) -> list[Figure]:
    from bench import importing

    return importing.measure(env)


def _reset_all(env: BenchEnv) -> list[Figure]:
    from bench import reset_all

    return reset_all.measure(env)


# The programs each section needs beyond Python (names in tests/support/tools.py);
# every section measures SQLite and PostgreSQL, so each needs the PostgreSQL server.
# The mail sections compare with the request rate of the same run, measured by wrk.
NEEDS: dict[str, tuple[str, ...]] = {
    "http": ("wrk",),
    "request_path": ("wrk",),
    "dispatch": ("wrk",),
    "inbox": ("wrk",),
}
ALWAYS = ("postgresql",)

SECTIONS: dict[str, Section] = {
    "engine": _engine,
    "sweep": _sweep,
    "support_list": _support_list,
    "http": _http,
    "request_path": _request_path,
    "enumeration": _enumeration,
    "code_enumeration": _code_enumeration,
    "enumeration_sending": _enumeration_sending,
    "hashing": _hashing,
    "dispatch": _dispatch,
    "inbox": _inbox,
    "reset_all": _reset_all,
    "import": _importing,
}


def _backends(env: BenchEnv) -> tuple[str, ...]:
    return BACKENDS if env.has_postgresql else ("sqlite",)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks against floors measured in the same run (issue 6).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, to keep the harness alive in CI"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where results.json and RESULTS.md go (default: bench/ for a full run, "
        "bench/out/ for --quick, so a quick run never overwrites the committed results)",
    )
    return parser.parse_args(argv)


def missing_programs(names: Sequence[str]) -> str | None:
    """One line saying what to install for these sections, or None when all is there."""
    wanted = {tool for name in names for tool in (*ALWAYS, *NEEDS.get(name, ()))}
    absent = tools.missing(wanted)
    if not absent:
        return None
    what = ", ".join(tool.what for tool in absent)
    command = tools.install_command(tool.package for tool in absent)
    return f"python -m bench needs {what}: run {command} (or python3 scripts/test.py)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(SECTIONS)
    absent = missing_programs(names)
    if absent is not None:
        print(absent, file=sys.stderr)
        return 2
    sizes = Sizes.tiny() if args.quick else Sizes.full()
    out_dir: Path = args.out or (HERE / "out" if args.quick else HERE)
    started = time.perf_counter()
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    with BenchEnv(sizes) as env:
        pg_version = env.postgresql_version()
        for name in names:
            section_started = time.perf_counter()
            print(f"== {name} ...", flush=True)
            try:
                produced = SECTIONS[name](env)
            except SectionSkipped as why:
                skipped[name] = str(why)
                print(f"== {name} skipped: {why}", flush=True)
                continue
            except Exception as exc:
                traceback.print_exc()
                failures[name] = f"{type(exc).__name__}: {exc}"
                print(f"== {name} FAILED: {failures[name]}", flush=True)
                continue
            figures.extend(produced)
            took = time.perf_counter() - section_started
            print(f"== {name} done in {took:.0f} s", flush=True)
            print(table(produced), flush=True)
        machine = describe_machine(pg_version)

    def notes() -> str:
        lines = []
        if failures:
            lines += ["## Sections that failed", ""]
            lines += [f"- `{name}`: {reason}" for name, reason in failures.items()]
            lines.append("")
        if skipped:
            lines += ["## Sections skipped", ""]
            lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
            lines.append("")
        return "\n".join(lines) + "\n" + findings.notes()

    elapsed = time.perf_counter() - started
    write_results(out_dir, figures, machine, quick=sizes.quick, elapsed_s=elapsed, notes=notes)
    print()
    print(table(figures))
    print(
        f"\n{len(figures)} figures in {elapsed:.0f} s; wrote {out_dir}/results.json and RESULTS.md"
    )
    if out_dir.resolve() == HERE and not failures:
        # The committed results of a whole run: the README quotes exactly these.
        from bench import readme

        readme.update(("bench",))
    if failures:
        print(f"failed sections: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
