"""`vagent bench bus`: how fast the durable log and one actor hop are on this machine.

Three figures, each through the same code the services use (Bus, ConsumerRunner,
Actor/Context), never through raw nats calls:

- awaited publish: one `bus.publish` at a time, the cost an actor pays per emit;
- pipelined publish: many `bus.publish` in flight, the ceiling for a busy server;
- one actor hop: input published → a consumer's handler emits a derived event →
  a core-NATS subscriber sees it; the latency a voice turn pays per actor.

The bench writes `user.text` events to fresh sessions in SESSIONS and purges them
afterwards. Against a running deployment every actor consuming `user.text`
(the dialogue actor) would react to them too: point it at an idle server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from actors.base import Actor, Context
from benches.common import bench_nats, percentile
from bus.admin import delete_consumer, purge
from bus.client import Bus, Message
from bus.consumer import ConsumerRunner, ConsumerSpec
from bus.errors import BusError
from bus.server import config_path
from bus.subjects import session_events, subject_of
from schemas import Event, TurnStarted, UserText, derived_id, new_id

log = logging.getLogger("vagent.bench")

STREAM = "SESSIONS"
PIPELINE_WINDOW = 256  # publishes in flight at once; far below nats-py's pending limits
HOP_GOAL_P95_MS = 2.0
HOP_TIMEOUT_S = 10.0

RESULT_KEYS = (
    "cores", "sync_always", "publish_awaited_per_s", "publish_pipelined_per_s",
    "hop_p50_ms", "hop_p95_ms", "hop_p99_ms", "hop_mean_ms",
)


class _Echo(Actor):
    """The smallest real actor: one derived `turn.started` per `user.text`."""

    name: ClassVar[str] = "bench"
    consumes: ClassVar[tuple[str, ...]] = ("user.text",)
    emits: ClassVar[frozenset[str]] = frozenset({"turn.started"})

    async def handle(self, event: Event, ctx: Context) -> None:
        assert isinstance(event, UserText)
        await ctx.emit(TurnStarted(session_id=event.session_id, turn_id=event.id,
                                   input_id=event.id))


def sync_always_configured(path: Path | None = None) -> bool:
    """Whether the config the embedded server uses fsyncs before every ack."""
    try:
        text = (path or config_path()).read_text()
    except OSError:
        return False
    return re.search(r"^\s*sync_interval\s*:\s*always\b", text, re.MULTILINE) is not None


async def bench_bus(url: str | None, *, events: int = 5000, hops: int = 2000) -> dict[str, float]:
    """Run the bus benchmark against `url`, or a temporary embedded server when None.

    `sync_always` is 1.0/0.0 for the embedded server (read from its nats.conf) and
    NaN for an external server, whose fsync policy a client cannot see.
    """
    if events < 1 or hops < 1:
        raise ValueError("events and hops must be at least 1")
    async with bench_nats(url) as (bus, embedded):
        results = await _measure(bus, events, hops)
    results["sync_always"] = float(sync_always_configured()) if embedded else math.nan
    return results


async def _measure(bus: Bus, events: int, hops: int) -> dict[str, float]:
    run = new_id()  # one fresh ULID per run, so reruns on the same server never collide
    sessions = {phase: f"bench-{run}-{phase}" for phase in ("await", "pipe", "hop")}
    try:
        awaited = await _publish_awaited(bus, sessions["await"], events)
        pipelined = await _publish_pipelined(bus, sessions["pipe"], events)
        hop_ms = await _hops(bus, sessions["hop"], f"bench_{run}", hops)
    finally:
        for session_id in sessions.values():
            # Only this run's subjects: other data on a shared server is left alone.
            await _cleanup(f"purge {session_id}",
                           purge(bus, STREAM, session_events(session_id)))
    hop_ms.sort()
    return {
        "cores": float(os.cpu_count() or 0),
        "publish_awaited_per_s": awaited,
        "publish_pipelined_per_s": pipelined,
        "hop_p50_ms": percentile(hop_ms, 50),
        "hop_p95_ms": percentile(hop_ms, 95),
        "hop_p99_ms": percentile(hop_ms, 99),
        "hop_mean_ms": sum(hop_ms) / len(hop_ms),
    }


def _user_texts(session_id: str, n: int) -> list[UserText]:
    # Built before the clock starts: the figures are about the bus, not msgspec.
    return [UserText(session_id=session_id, text=f"bench {i}", source="cli") for i in range(n)]


async def _publish_awaited(bus: Bus, session_id: str, n: int) -> float:
    batch = _user_texts(session_id, n)
    started = time.perf_counter()
    for event in batch:
        await bus.publish(event)
    return n / (time.perf_counter() - started)


async def _publish_pipelined(bus: Bus, session_id: str, n: int) -> float:
    # Bus has no fire-and-collect publish and cli/ may not touch nats, so in-flight
    # publishes are plain concurrent `bus.publish` calls, gathered window by window.
    # Each window waits for its slowest ack, so this slightly understates the
    # server's ceiling compared with a sliding window (js.publish_async).
    batch = _user_texts(session_id, n)
    started = time.perf_counter()
    for i in range(0, n, PIPELINE_WINDOW):
        await asyncio.gather(*(bus.publish(e) for e in batch[i:i + PIPELINE_WINDOW]))
    return n / (time.perf_counter() - started)


async def _hops(bus: Bus, session_id: str, durable: str, hops: int) -> list[float]:
    actor = _Echo(bus)
    # Only this bench session's inputs, and the output type is not among them: no feedback loop.
    spec = ConsumerSpec(stream=STREAM, durable=durable,
                        subjects=(subject_of(UserText(session_id=session_id, text="")),))
    runner = ConsumerRunner(bus, spec, actor.on_event, name="bench")
    waiting: dict[str, asyncio.Future[None]] = {}

    async def seen(msg: Message) -> None:
        # Matched by the emitted event's Nats-Msg-Id (its derived id): no decode on the clock.
        future = waiting.pop(msg.headers.get("Nats-Msg-Id", ""), None)
        if future is not None and not future.done():
            future.set_result(None)

    sub = await bus.subscribe(subject_of(TurnStarted(session_id=session_id)), seen)
    await bus.flush()  # the subscription is live on the server before the first hop
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    warmup = min(50, max(5, hops // 20))  # consumer creation, first fetch, caches
    samples: list[float] = []
    try:
        for i in range(warmup + hops):
            event = UserText(session_id=session_id, text=f"hop {i}", source="cli")
            future: asyncio.Future[None] = loop.create_future()
            waiting[derived_id(event.id, actor.name, 0)] = future
            started = time.perf_counter()
            await bus.publish(event)
            await _within(future, task, f"hop {i}: no emitted event in {HOP_TIMEOUT_S}s")
            elapsed_ms = (time.perf_counter() - started) * 1000
            if i >= warmup:
                samples.append(elapsed_ms)
            # Let the runner ack before the next input, so hops never overlap.
            def acked(i: int = i) -> bool:
                return runner.handled > i

            await _until(acked, task, f"hop {i}: input never acked")
    finally:
        runner.stop()
        await asyncio.gather(task, return_exceptions=True)
        await sub.stop()
        await _cleanup(f"delete consumer {durable}", delete_consumer(bus, STREAM, durable))
    return samples


async def _cleanup(what: str, action: Awaitable[object]) -> None:
    """Best-effort tidying: a failure is reported, never allowed to hide the bench's own error."""
    try:
        await action
    except Exception as exc:
        log.warning("bench cleanup failed: %s: %r", what, exc)


async def _within(future: asyncio.Future[None], runner_task: asyncio.Task[None], error: str) -> None:
    """Wait for `future`, failing fast if the runner died instead of timing out blindly."""
    done, _ = await asyncio.wait({future, runner_task}, timeout=HOP_TIMEOUT_S,
                                 return_when=asyncio.FIRST_COMPLETED)
    if future in done:
        return
    if runner_task in done:
        runner_task.result()  # re-raises what stopped the consumer
        raise BusError(f"{error}: the bench consumer stopped")
    raise BusError(error)


async def _until(condition: Callable[[], bool], runner_task: asyncio.Task[None], error: str) -> None:
    deadline = time.monotonic() + HOP_TIMEOUT_S
    while not condition():
        if runner_task.done():
            runner_task.result()
            raise BusError(f"{error}: the bench consumer stopped")
        if time.monotonic() > deadline:
            raise BusError(error)
        # A short sleep, not sleep(0): a busy loop would steal a core from nats-server.
        await asyncio.sleep(0.0005)


def print_report(results: dict[str, float]) -> None:
    sync = results.get("sync_always", math.nan)
    fsync = ("unknown (external server)" if math.isnan(sync)
             else "sync_interval: always (fsync before every ack)" if sync
             else "default (periodic fsync; acks may precede the disk)")
    p95 = results["hop_p95_ms"]
    verdict = "PASS" if p95 <= HOP_GOAL_P95_MS else "MISS"
    print("vagent bench bus")
    print(f"  cores                 {int(results['cores'])}")
    print(f"  fsync policy          {fsync}")
    print(f"  publish, awaited      {results['publish_awaited_per_s']:>10,.0f} events/s")
    print(f"  publish, pipelined    {results['publish_pipelined_per_s']:>10,.0f} events/s"
          f"  ({PIPELINE_WINDOW} in flight)")
    print(f"  one actor hop         p50 {results['hop_p50_ms']:.2f} ms  "
          f"p95 {p95:.2f} ms  p99 {results['hop_p99_ms']:.2f} ms  "
          f"mean {results['hop_mean_ms']:.2f} ms")
    print(f"  goal: one hop ≤ {HOP_GOAL_P95_MS:g} ms p95   {verdict} ({p95:.2f} ms)")
