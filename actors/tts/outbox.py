"""A session's tts events, appended to the log in order by one task of their own, so
audio frames never wait for JetStream's fsync."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from actors.base import Context
from schemas import Event

log = logging.getLogger("vagent.tts")


class Outbox:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[Context, Event]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def post(self, ctx: Context, stamped: Event) -> None:
        """Append `stamped` (made by `ctx.stamp`) after everything posted before it."""
        self._queue.put_nowait((ctx, stamped))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="tts-outbox")

    async def flush(self) -> None:
        """Until everything posted so far is stored (or given up on)."""
        await self._queue.join()

    async def close(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        # Ends when the queue is empty; post() starts another: idle sessions hold no task.
        while not self._queue.empty():
            ctx, event = self._queue.get_nowait()
            try:
                # Ids are derived from the causing event: a retried publish is stored once.
                await ctx.publish(event)
            except Exception as exc:  # the sound went out regardless; the log misses one fact
                log.error("tts event not stored", extra={"event": event.type,
                                                         "aggregate": event.aggregate_id,
                                                         "error": repr(exc)})
            finally:
                self._queue.task_done()
