"""The one host loop of `vagent up`, `vagent edge`, `vagent actor run` and `vagent
projections serve`: SIGINT and SIGTERM ask for a stop, the process waits for that or for a
part to die, then stops what it started, last started first."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Host:
    """Installs the stop signals from the start (a signal during startup stops the process
    once it is up, instead of killing it half started) and stops the registered parts in
    reverse order on the way out, each one even if an earlier one failed."""

    def __init__(self) -> None:
        # Set by a stop signal, and once `wait()` returns for any reason: the process is on
        # its way out (supervisors then restart nothing).
        self.stopping = asyncio.Event()
        self._parts = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Host:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.stopping.set)
        await self._parts.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        try:
            return bool(await self._parts.__aexit__(kind, exc, tb))
        finally:
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def on_stop(self, stop: Callable[[], Awaitable[Any]]) -> None:
        """`stop()` is awaited on the way out, before what was registered earlier."""
        self._parts.push_async_callback(stop)

    def task(self, task: asyncio.Task[Any]) -> None:
        """A background task (a supervisor), cancelled on the way out."""
        self.on_stop(lambda: cancelled(task))

    async def wait(self, *watched: Awaitable[None]) -> BaseException | None:
        """Until a stop signal, or until one of `watched` ends: the exception it failed
        with, if it did."""
        waiter = asyncio.create_task(self.stopping.wait())
        tasks = [asyncio.ensure_future(w) for w in watched]
        try:
            await asyncio.wait({waiter, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            return next((t.exception() for t in tasks
                         if t.done() and not t.cancelled() and t.exception()), None)
        finally:
            self.stopping.set()
            for task in (waiter, *tasks):
                task.cancel()


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
