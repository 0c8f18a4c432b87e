"""Stopping always finishes, however a read from NATS races its cancellation.

nats-py's `Subscription.next_msg` reads under `asyncio.wait_for` in a task of its own; on
Python 3.11 a cancellation that meets an arriving message is swallowed there, and the
cancelled reader goes on reading. These tests cancel readers while messages stream in, many
times, and bound each stop (with the stop in a task of its own, so a stop that swallowed the
timeout's cancellation too still fails the test instead of hanging it).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from pathlib import Path

from bus.client import Bus, next_message
from bus.log import read
from projections.runtime import ProjectionService
from schemas import UserText, new_id

STOP_BOUND = 20.0  # seconds; a stop takes milliseconds, a hung one forever


async def ends_within(awaitable: Awaitable[object], what: str) -> None:
    task = asyncio.ensure_future(awaitable)
    try:
        async with asyncio.timeout(STOP_BOUND):
            await asyncio.shield(task)
    except TimeoutError:
        raise AssertionError(f"{what} did not end within {STOP_BOUND:g}s") from None
    except asyncio.CancelledError:
        if not task.cancelled():
            raise


async def backlog(bus: Bus, n: int) -> str:
    """A session of `n` events: a reader from its first event has messages streaming in."""
    s = "z" + new_id()
    events = [UserText(session_id=s, text=str(i)) for i in range(n)]
    for i in range(0, n, 200):
        await asyncio.gather(*(bus.publish(e) for e in events[i:i + 200]))
    return s


async def test_a_stream_follower_cancelled_while_messages_arrive_always_ends(bus: Bus) -> None:
    s = await backlog(bus, 1500)
    rng = random.Random(7)
    seen = 0

    async def follow(started: asyncio.Event) -> None:
        nonlocal seen
        async for _ in read(bus, "SESSIONS", f"vagent.session.{s}.evt.>"):
            seen += 1
            started.set()

    for attempt in range(60):
        seen = 0
        started = asyncio.Event()
        task = asyncio.create_task(follow(started))
        async with asyncio.timeout(10):
            await started.wait()
        await asyncio.sleep(rng.uniform(0, 0.02))
        task.cancel()
        await ends_within(task, f"a follower cancelled after {seen} events (attempt {attempt})")
        assert task.cancelled()


async def test_a_cancelled_next_message_loses_no_message(bus: Bus) -> None:
    """A message that arrives as its reader is cancelled is either returned or left for the
    next read."""
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    try:
        for n in range(200):
            reader = asyncio.create_task(next_message(sub, 5.0))
            await asyncio.sleep(0)  # the reader waits on the subscription's queue
            await bus.publish_core(inbox, str(n).encode())
            # Cancel in the same loop iteration as the message is handed over, or about then.
            for _ in range(n % 4):
                await asyncio.sleep(0)
            reader.cancel()
            await ends_within(asyncio.wait({reader}), "a cancelled next_message")
            if reader.cancelled():
                msg = await next_message(sub, 5.0)
            else:
                msg = reader.result()  # it had the message before the cancellation came
            assert msg.data == str(n).encode()
    finally:
        await sub.unsubscribe()


async def test_next_message_times_out(bus: Bus) -> None:
    sub = await bus.nc.subscribe(bus.nc.new_inbox())
    try:
        try:
            await next_message(sub, 0.05)
        except TimeoutError:
            pass
        else:
            raise AssertionError("no message, yet next_message returned")
    finally:
        await sub.unsubscribe()


async def test_a_projection_service_stopped_while_events_arrive_always_stops(bus: Bus,
                                                                            tmp_path: Path) -> None:
    """`vagent up`'s Ctrl-C path: the service stops while its feeders read a stream that
    events keep arriving on."""
    s = "z" + new_id()
    flowing = True

    async def publish() -> None:
        n = 0
        while flowing:
            await asyncio.gather(*(bus.publish(UserText(session_id=s, text=str(n + i)))
                                   for i in range(50)))
            n += 50

    publisher = asyncio.create_task(publish())
    rng = random.Random(11)
    try:
        for attempt in range(25):
            data_dir = tmp_path / str(attempt)
            data_dir.mkdir()
            service = ProjectionService(bus, data_dir)
            await service.start()
            await asyncio.sleep(rng.uniform(0.05, 0.3))  # the feeders are reading
            await ends_within(service.stop(), f"ProjectionService.stop (attempt {attempt})")
    finally:
        flowing = False
        await publisher
