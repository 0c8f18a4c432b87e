"""A turn's token deltas to the client, coalesced.

A fast model (or a cached answer) streams hundreds of tokens a second; each delta sent
alone is a NATS message and a WebSocket frame per token, which is most of what a long
answer costs the process. The first delta goes at once (the time to first token is what
a listener feels); later text is sent at most once per `every` seconds, and whatever
waits is sent when the interval ends, or before the turn's closing message (`flush`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

EVERY_S = 0.03  # ~33 deltas a second at most: smooth to read, a tenth of a fast model's tokens


class LiveText:
    def __init__(self, publish: Callable[[str, int], Awaitable[None]], every: float = EVERY_S) -> None:
        self._publish = publish  # (text, index)
        self._every = every
        self._waiting: list[str] = []
        self._sent = 0  # deltas published: the next one's index
        self._last = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()  # deltas leave in order, whoever sends them

    async def add(self, text: str) -> None:
        self._waiting.append(text)
        due = self._last + self._every - time.monotonic()
        if due <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(due, self._due)

    def _due(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        task.add_done_callback(_retrieved)

    async def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            if not self._waiting:
                return
            text, self._waiting = "".join(self._waiting), []
            self._last = time.monotonic()
            index, self._sent = self._sent, self._sent + 1
            await self._publish(text, index)

    def close(self) -> None:
        """Drop what waits (the turn was cut short: its closing message says what was said)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting = []


def _retrieved(task: asyncio.Task[None]) -> None:
    # A live delta is derivable and best-effort: a failed publish is not worth a traceback
    # on a task nobody awaits (the closing message carries the text).
    if not task.cancelled():
        task.exception()
