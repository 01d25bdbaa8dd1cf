"""Rendered diagrams, kept per application so Graphviz runs once per distinct diagram.

A flow's diagram changes only with the flow's version, an attempt's only with its
state and path: the key holds exactly these. Rendering SVG or PNG starts a Graphviz
process; one per request let 30 clients push a sign-in from 213 ms to 3.4 s. Here
concurrent requests for one diagram share a single render, and the result is kept
(least recently used first out, within a byte budget).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

# Rendered diagrams kept per application (an SVG is ~15 KB, a PNG ~60 KB).
DIAGRAM_CACHE_BYTES = 16 * 1024 * 1024

# (flow, flow version, format, current state, path of accepted transitions)
DiagramKey = tuple[str, int, str, str | None, tuple[tuple[str | None, str, str], ...]]


class DiagramCache:
    """Rendered diagrams, newest use last, within `max_bytes`; one render per key at once.

    Used from the application's event loop only. A render that fails (no Graphviz)
    is not kept: the next request tries again.
    """

    def __init__(self, max_bytes: int = DIAGRAM_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._done: OrderedDict[DiagramKey, bytes] = OrderedDict()
        self._size = 0
        self._pending: dict[DiagramKey, asyncio.Task[bytes]] = {}

    async def get(self, key: DiagramKey, render: Callable[[], bytes]) -> bytes:
        if key in self._done:
            self._done.move_to_end(key)
            return self._done[key]
        task = self._pending.get(key)
        if task is None:
            # Graphviz is a subprocess: keep the event loop free while it runs.
            task = asyncio.ensure_future(asyncio.to_thread(render))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        # Shielded: a client that goes away does not cancel the others' render.
        return await asyncio.shield(task)

    def _settle(self, key: DiagramKey, task: asyncio.Task[bytes]) -> None:
        self._pending.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        body = task.result()
        if len(body) > self.max_bytes:
            return
        self._done[key] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, evicted = self._done.popitem(last=False)
            self._size -= len(evicted)
