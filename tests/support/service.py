"""`recovery serve` and the other commands as real subprocesses, for tests and benchmarks.

`start_service(env, cwd=...)` launches `recovery serve` on a free loopback
port with a clean `RECOVERY_*` environment (the caller's own `RECOVERY_*`
variables are dropped, so a developer's shell cannot leak into a test), waits
until `/health` answers, and returns a `RunningService` that knows its URL,
how long it took to become ready, and everything the process printed
(stdout and stderr, captured to one file, so a chatty server never blocks
on a full pipe). `stop()` sends SIGTERM and returns the exit status.

`run_recovery(*args, env=..., cwd=...)` runs any other command to completion.

The process is started as `python -m api.cli`, with the interpreter running
the tests: the same code the `recovery` console script runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.postgres import free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 120.0
PORT_TRIES = 3
_POLL_S = 0.02


def command_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its `RECOVERY_*` variables, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECOVERY_")}
    clean["PYTHONUNBUFFERED"] = "1"
    clean.update(env or {})
    return clean


def recovery_command(*args: str) -> list[str]:
    """The argv that runs `recovery ARGS...` with the tests' interpreter."""
    return [sys.executable, "-m", "api.cli", *args]


def run_recovery(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run `recovery ARGS...` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        recovery_command(*args),
        env=command_env(env),
        cwd=cwd,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class RunningService:
    """A `recovery serve` subprocess and what it printed."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    env: dict[str, str]
    cwd: Path
    ready_seconds: float = 0.0
    returncode: int | None = field(default=None)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, **kw: object) -> httpx.Client:
        """An httpx client aimed at the service."""
        return httpx.Client(base_url=self.base_url, timeout=30.0, **kw)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send `sig`, wait for the exit and return its status (killed if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(
                    f"recovery serve ignored signal {sig} for {timeout} s; killed.\n"
                    + self.log()[-4000:]
                ) from None
        self.returncode = self.process.returncode
        return self.returncode

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_service(
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path,
    port: int | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_S,
) -> RunningService:
    """Start `recovery serve` on loopback and return once `/health` answers 200.

    `RECOVERY_PUBLIC_BASE_URL` defaults to the service's own address (the
    allowed-hosts guard needs it to match). The output goes to
    `cwd/serve-<port>.log`. Raises RuntimeError, with the end of the log, if
    the process exits or is not ready within `ready_timeout` seconds. When
    the port was picked here and another process took it in the meantime,
    it tries again on a new one.
    """
    tries = 1 if port is not None else PORT_TRIES
    for attempt in range(1, tries + 1):
        try:
            return _start(env, cwd=cwd, port=port or free_port(), args=args, timeout=ready_timeout)
        except PortTaken:
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """The server could not bind its port (someone else took it)."""


def _start(
    env: Mapping[str, str] | None,
    *,
    cwd: Path,
    port: int,
    args: Sequence[str],
    timeout: float,
) -> RunningService:
    full_env = {"RECOVERY_PUBLIC_BASE_URL": f"http://{HOST}:{port}", **(env or {})}
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = cwd / f"serve-{port}.log"
    command = recovery_command("serve", "--host", HOST, "--port", str(port), *args)
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            env=command_env(full_env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = RunningService(process, HOST, port, log_path, full_env, cwd)
    try:
        _wait_healthy(service, timeout)
    except BaseException:
        service.stop(signal.SIGKILL)
        raise
    service.ready_seconds = time.perf_counter() - started
    return service


def _wait_healthy(service: RunningService, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    with httpx.Client(base_url=service.base_url, timeout=1.0) as http:
        while True:
            status = service.process.poll()
            if status is not None:
                if "address already in use" in service.log().lower():
                    raise PortTaken(f"port {service.port} is taken")
                raise RuntimeError(
                    f"recovery serve exited with status {status} before it was ready:\n"
                    + service.log()[-4000:]
                )
            try:
                if http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"recovery serve was not ready within {timeout} s:\n" + service.log()[-4000:]
                )
            time.sleep(_POLL_S)


@contextmanager
def running_service(
    env: Mapping[str, str] | None = None, *, cwd: Path, args: Sequence[str] = ()
) -> Iterator[RunningService]:
    """`start_service` for the length of a with-block, stopped with SIGTERM after it."""
    service = start_service(env, cwd=cwd, args=args)
    try:
        yield service
    finally:
        service.stop()
