"""The host loop of `vagent up`, `edge`, `actor run` and `projections serve`: a stop signal or
a dead part ends the wait, and every part is stopped, last started first, even when an
earlier stop fails."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from hosting.loop import Host


async def test_a_signal_ends_the_wait_and_the_parts_stop_in_reverse_order() -> None:
    stopped: list[str] = []

    async def stop(name: str) -> None:
        stopped.append(name)

    async with Host() as parts:
        for name in ("nats", "bus", "actors"):
            parts.on_stop(lambda name=name: stop(name))  # type: ignore[misc]
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(parts.wait(asyncio.Event().wait()), 5) is None
    assert stopped == ["actors", "bus", "nats"]
    # The default handlers are back once the host is gone.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_a_dead_part_ends_the_wait_with_its_error_and_a_failed_stop_stops_no_other() -> None:
    stopped: list[str] = []
    background = asyncio.create_task(asyncio.Event().wait())

    async def dies() -> None:
        raise RuntimeError("actor died")

    async def fails() -> None:
        raise OSError("already gone")

    async def first() -> None:
        stopped.append("first")

    with pytest.raises(OSError, match="already gone"):
        async with Host() as parts:
            parts.on_stop(first)
            parts.task(background)
            parts.on_stop(fails)
            failed = await asyncio.wait_for(parts.wait(dies()), 5)
            assert isinstance(failed, RuntimeError)
    assert stopped == ["first"]
    assert background.cancelled()
