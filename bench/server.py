"""Running the bench server in a subprocess, loading it with wrk, and watching its memory.

`BenchServer` starts `python -m bench.app` (the product's `recovery serve`
configuration plus the bench floor routes) on a free loopback port with the
given `RECOVERY_*` settings, waits for `/health`, and stops it with SIGTERM.
Given a `program` (port → argv) it starts that instead: `recovery serve`
itself, or a floor app of `bench.floors` (which has no `/health`: any HTTP
answer on `ready_path` then means it is up). `spawn()` and `wait_ready()`
split `start()`, so several servers can boot at once. A background thread
samples its resident memory (psutil) the whole time, so the peak under load
is known. `wrk` is Debian's HTTP load generator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from tests.support.postgres import free_port

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 16
# One load-generator thread: on two cores, a second wrk thread only takes CPU
# from the server it measures.
WRK_THREADS = 1


class BenchServer:
    """The bench app under uvicorn in a child process."""

    def __init__(
        self,
        settings: dict[str, str],
        *,
        dispatcher: bool,
        log_dir: Path,
        label: str,
        extra_args: tuple[str, ...] = (),
        program: Callable[[int], list[str]] | None = None,
        ready_path: str = "/health",
        ready_any_status: bool = False,
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = {
            "RECOVERY_PUBLIC_BASE_URL": self.base_url,
            # The per-IP limits (20 POSTs, 60 GETs a minute) would answer 429 to a load
            # generator on one address; the limiter still runs, with budgets it never reaches.
            "RECOVERY_PUBLIC_RATE_LIMIT_PER_MINUTE": "1000000000",
            "RECOVERY_PUBLIC_GET_RATE_LIMIT_PER_MINUTE": "1000000000",
            "RECOVERY_SUPPORT_RATE_LIMIT_PER_MINUTE": "1000000000",
            **settings,
        }
        self.dispatcher = dispatcher
        self.extra_args = extra_args
        self.program = program
        self.ready_path = ready_path
        self.ready_any_status = ready_any_status
        self.log_path = log_dir / f"server-{label}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._sampler: threading.Thread | None = None
        self._sampling = threading.Event()
        self.peak_rss_bytes = 0
        self.start_rss_bytes = 0

    def start(self, timeout: float = 60.0) -> BenchServer:
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> BenchServer:
        """Start the process; `wait_ready()` then waits for it to answer."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECOVERY_")}
        env.update(self.settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        if self.program is not None:
            cmd = self.program(self.port)
        else:
            cmd = [sys.executable, "-m", "bench.app", "--port", str(self.port)]
            if not self.dispatcher:
                cmd.append("--no-dispatcher")
        cmd.extend(self.extra_args)
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=self._log)
        return self

    def wait_ready(self, timeout: float = 60.0) -> BenchServer:
        """Block until the server answers `ready_path`, then start sampling its memory."""
        assert self._proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"bench server exited: {self.log_tail()}")
            try:
                status = httpx.get(self.base_url + self.ready_path, timeout=1.0).status_code
                if status == 200 or self.ready_any_status:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench server did not answer /health: {self.log_tail()}")
            time.sleep(0.1)
        self.start_rss_bytes = self.rss_bytes()
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def rss_bytes(self) -> int:
        if self._proc is None:
            return 0
        try:
            return int(psutil.Process(self._proc.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def _sample(self) -> None:
        while self._sampling.is_set():
            self.peak_rss_bytes = max(self.peak_rss_bytes, self.rss_bytes())
            time.sleep(0.05)

    def reset_peak(self) -> None:
        self.peak_rss_bytes = self.rss_bytes()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        self._sampling.clear()
        if self._sampler is not None:
            self._sampler.join(timeout=2)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- wrk --------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What wrk reports for one run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non_2xx: int

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unreadable wrk duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50 and p99 latency, and error counts from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"(\d+) requests in", output)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"unreadable wrk output:\n{output}")
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        requests=int(total.group(1)),
        errors=sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    seconds: float,
    *,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    connections: int = CONNECTIONS,
    lua: str | None = None,
) -> WrkResult:
    """One wrk run at `connections` concurrent connections; refuses results with errors.

    `lua` is appended to the generated script, e.g. a `request` function that
    varies the body per request (see `cycling_body_lua`).
    """
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(json.dumps(body))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if lua is not None:
        lines.append(lua)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        done = subprocess.run(
            [
                "wrk",
                f"-t{WRK_THREADS}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        os.unlink(script.name)
    result = parse_wrk(done.stdout)
    if result.non_2xx or result.errors:
        raise RuntimeError(
            f"wrk against {url}: {result.non_2xx} non-2xx answers, {result.errors} socket errors"
        )
    return result


def cycling_body_lua(json_format: str, count: int, offset: int = 0) -> str:
    """A wrk `request` function whose JSON body cycles through `count` values.

    `json_format` is a Lua `string.format` pattern with one integer, e.g.
    `{"email":"k%07d@example.com"}`: the n-th request sends `offset + n % count`.
    The Content-Type header must be set (`headers=`) since the body is not static.
    """
    return (
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f"  local body = string.format({_lua_string(json_format)}, {offset} + n % {count})\n"
        "  return wrk.format(nil, nil, nil, body)\n"
        "end"
    )


def _lua_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
