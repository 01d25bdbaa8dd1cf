"""A throwaway Redis server on loopback, for tests and the chaos benchmark.

`running_redis()` starts the installed `redis-server` as a subprocess on a
free 127.0.0.1 port, with no persistence (nothing written outside its own
temporary directory), waits until it answers PING, and stops it afterwards.
The `redis_server` fixture does the same for one test; where `redis-server`
is not installed it skips with a reason, except under CI=true, where that is
a failure (`scripts/test.py` installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.tools import TOOLS, require

HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02


def find_redis_server() -> str | None:
    """The path of the `redis-server` binary, or None."""
    found = TOOLS["redis"].find()
    return str(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    """Whether a Redis server answers PING on the port (raw RESP: no client library needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A running `redis-server`; `url` is what RECOVERY_REDIS_URL takes."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it hangs)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(root: Path) -> RedisServer:
    """Start `redis-server` on a free loopback port; RuntimeError if it does not answer."""
    binary = find_redis_server()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    port = _free_port()
    command = [
        binary,
        "--bind",
        HOST,
        "--port",
        str(port),
        # A cache of counters: nothing to keep across restarts.
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(root),
        "--logfile",
        str(root / "redis.log"),
        "--protected-mode",
        "yes",
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = RedisServer(process, port, root)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"redis-server did not start on port {port}:\n{server.log()[-2000:]}"
            )
        time.sleep(_POLL_S)
    return server


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A Redis server for the length of the block; its files are removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="recovery-redis-"))
    try:
        server = start_redis(root)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def require_redis() -> None:
    """Skip the calling test when `redis-server` is missing (fail instead under CI=true)."""
    require("redis")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started Redis server for one test."""
    require_redis()
    with running_redis() as server:
        yield server
