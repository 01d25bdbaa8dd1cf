"""A throwaway PostgreSQL server started from the installed binaries.

PostgreSQL refuses to run as root, and sessions and CI run as root: there the
server runs as the `postgres` user (`runuser`) on a data directory that user
owns. Databases are created per test from a template with pytest-postgresql's
`DatabaseJanitor`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.tools import find_pg_bin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server on 127.0.0.1; `url(db)` gives a SQLAlchemy URL."""

    bin_dir: Path
    root: Path
    port: int
    user: str = "postgres"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-U",
                self.user,
            )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=on "
            "-c max_connections=300 -c shared_buffers=128MB"
        )
        self._run(
            "pg_ctl",
            "-w",
            "-t",
            "60",
            "start",
            "-D",
            str(self.datadir),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            self._run("pg_ctl", "-w", "stop", "-D", str(self.datadir), "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_postgres(root: Path | None = None) -> Iterator[PostgresServer]:
    """Start a server for the duration of the block; remove its files afterwards."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    own_root = root is None
    root = root or Path(tempfile.mkdtemp(prefix="recovery-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(bin_dir=bin_dir, root=root, port=free_port()).start()
    try:
        yield server
    finally:
        server.stop("immediate")
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
