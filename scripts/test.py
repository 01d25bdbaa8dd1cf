#!/usr/bin/env python3
"""Set up everything the test suite needs on a fresh Debian or Ubuntu machine, then run it.

    python3 scripts/test.py [PYTEST ARGUMENTS ...]

1. The Debian packages the tests use (PostgreSQL, Graphviz, Chromium, Redis,
   wrk; see `tests/support/tools.py`) are installed with apt-get when they are
   missing and this runs as root. Without root, the one install command it
   could not run is printed and the run goes on: the tests that need a missing
   program skip with that command as their reason (under CI=true they fail).
2. The virtual environment `.venv` is made, and the project installed in it
   with its test extras; again only when `pyproject.toml` changed since.
3. pytest runs in it with the arguments given (the whole suite by default),
   and its exit status is this script's.

Only the standard library is used: nothing else exists before step 2.
A script rather than a make target: a fresh machine has Python, not make.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
sys.path.insert(0, str(ROOT))

from tests.support.tools import install_command, missing  # noqa: E402


def say(message: str) -> None:
    print(f"scripts/test.py: {message}", flush=True)


def _run(command: list[str], **kw: object) -> None:
    subprocess.run(command, check=True, **kw)  # type: ignore[call-overload]


def system_packages() -> None:
    """Install the missing Debian packages (root only), or say which command would."""
    packages = [tool.package for tool in missing()]
    if importlib.util.find_spec("ensurepip") is None:
        # Debian's own python3 makes virtual environments only with this package.
        packages.append("python3-venv")
    if not packages:
        return
    command = install_command(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        say(f"not installed, and not root to install them; run: {command}")
        return
    say(f"installing {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], env=env)
    _run(["apt-get", "install", "-y", "-q", *packages], env=env)
    if "postgresql" in packages and shutil.which("pg_ctlcluster"):
        # The package starts a cluster of its own; the tests start theirs.
        subprocess.run(["service", "postgresql", "stop"], check=False, capture_output=True)
    still = [tool.package for tool in missing()]
    if still:
        say(f"still missing after apt-get: {' '.join(still)}")


def project() -> Path:
    """`.venv` with the project and its test extras, installed once per pyproject.toml."""
    python = VENV / "bin" / "python"
    if not python.exists():
        say("making .venv")
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{digest}"
    if not stamp.exists():
        say("installing the project and its test extras into .venv")
        _run([str(python), "-m", "pip", "install", "-q", "-e", ".[test]"], cwd=ROOT)
        for old in VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return python


def main(argv: list[str]) -> int:
    system_packages()
    python = project()
    return subprocess.run([str(python), "-m", "pytest", *argv], cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
