"""A lean HTTP/1.1 client on raw sockets: one request at a time, or an open-loop load.

Timing one request at a time needs a client that costs far less than what
it times: httpx spends a few hundred microseconds of CPU per request, a
sizeable part of a 2 ms target, and more so on a busy 2-core machine. Here a
request is a byte string built once; sending it is one `sendall`, and the
answer is read up to its `Content-Length` (every answer of the product and of
the floors has one).

- `Connection`: one keep-alive connection, blocking; `exchange(raw)` returns
  the status, the body and the seconds between sending and the last byte.
- `python -m bench.lean_http open-loop ...`: an open-loop load in its own
  process (so it takes no CPU from the SMTP sink in the bench process).
  Request i is due at i/rate seconds whatever happened to the earlier ones;
  it goes out on an idle keep-alive connection or, when every connection is
  busy, on a new one (up to `MAX_CONNECTIONS`), so a slow server makes the
  queue grow instead of slowing the load down, as real users would. Each
  request's body names its own address (`--email-format` with the request's
  number); the process writes, per request, the address, when it was due,
  when its answer arrived (wall clock, `time.time()`, which the sink's
  receipts share) and the status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# At most this many connections at once (uvicorn's default backlog is 2048).
MAX_CONNECTIONS = 256
HOST = "127.0.0.1"


def post_json(port: int, path: str, body: dict[str, Any], user_agent: str = "bench") -> bytes:
    """A complete `POST path` request with a JSON body, as bytes."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        f"User-Agent: {user_agent}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "\r\n"
    )
    return head.encode() + payload


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")


class Connection:
    """One blocking keep-alive connection to a loopback server."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def exchange(self, raw: bytes) -> tuple[int, bytes, float]:
        """Send one request; its status, its body, and the seconds it took."""
        started = time.perf_counter()
        self.sock.sendall(raw)
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buffer += chunk
        head, rest = buffer[:end], buffer[end + 4 :]
        length = _content_length(head)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            rest += chunk
        elapsed = time.perf_counter() - started
        self._buffer = rest[length:]
        return int(head.split(b" ", 2)[1]), rest[:length], elapsed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- open loop --------------------------------------------------------------------------


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(port: int) -> Stream:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _exchange(conn: Stream, raw: bytes) -> int:
    reader, writer = conn
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(_content_length(head[:-4]))
    return int(head.split(b" ", 2)[1])


def _usable(conn: Stream) -> bool:
    """Not closed by the server meanwhile (uvicorn closes keep-alive connections idle 5 s)."""
    return not conn[0].at_eof() and not conn[1].is_closing()


async def open_loop(port: int, requests: list[tuple[str, bytes]], rate: float) -> dict[str, Any]:
    """Send `requests` (label, raw) open loop at `rate`/s; per request: due, answered, status.

    The connection of each request is chosen when it is due: the most recently
    idle one, else a new one while fewer than `MAX_CONNECTIONS` are open, else
    the request waits for one (and the load falls behind schedule, which
    `most_late_s` reports). A keep-alive connection the server closed before
    the request reached it is replaced once.
    """
    idle: list[Stream] = []
    open_now = 0
    opened = 0
    most_open = 0
    results: list[dict[str, Any]] = []
    tasks: set[asyncio.Task[None]] = set()
    freed = asyncio.Event()
    most_late = 0.0
    start_wall, start = time.time(), time.perf_counter()

    def wall() -> float:
        return start_wall + (time.perf_counter() - start)

    def closed(conn: Stream | None) -> None:
        nonlocal open_now
        open_now -= 1
        if conn is not None:
            conn[1].close()
        freed.set()

    async def one(label: str, raw: bytes, due: float, conn: Stream | None) -> None:
        nonlocal opened
        status = 0
        try:
            for attempt in range(2):
                reused = conn is not None
                if conn is None:
                    opened += 1
                    conn = await _open(port)
                try:
                    status = await _exchange(conn, raw)
                    break
                except (OSError, asyncio.IncompleteReadError):
                    conn[1].close()
                    conn = None
                    if not reused or attempt == 1:
                        raise
        except (OSError, asyncio.IncompleteReadError):
            closed(conn)
            results.append({"label": label, "due": due, "done": wall(), "status": 0})
            return
        results.append({"label": label, "due": due, "done": wall(), "status": status})
        assert conn is not None
        idle.append(conn)
        freed.set()

    for i, (label, raw) in enumerate(requests):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        conn: Stream | None = None
        while conn is None:
            while idle and not _usable(idle[-1]):
                closed(idle.pop())
            if idle:
                conn = idle.pop()
            elif open_now < MAX_CONNECTIONS:
                open_now += 1
                most_open = max(most_open, open_now)
                break
            else:
                freed.clear()
                await freed.wait()
        most_late = max(most_late, time.perf_counter() - due)
        task = asyncio.create_task(one(label, raw, start_wall + i / rate, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    for _reader, writer in idle:
        writer.close()
    return {
        "results": results,
        "connections": opened,
        "most_connections_at_once": most_open,
        "most_late_s": most_late,
        "seconds": time.perf_counter() - start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lean_http")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("open-loop", help="POST one JSON body per request, open loop")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--path", default="/api/recovery")
    load.add_argument("--rate", type=float, required=True, help="requests per second")
    load.add_argument("--count", type=int, required=True)
    load.add_argument("--email-format", required=True, help="a %%-format with the request's number")
    load.add_argument("--offset", type=int, default=0, help="the first request's number")
    load.add_argument("--out", type=Path, required=True, help="where the JSON results go")
    args = parser.parse_args(argv)
    requests = []
    for i in range(args.count):
        email = args.email_format % (args.offset + i)
        requests.append((email, post_json(args.port, args.path, {"email": email})))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print("ready", flush=True)
    outcome = runner(open_loop(args.port, requests, args.rate))
    args.out.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
