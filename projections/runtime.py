"""Running the projections: follow each stream from the checkpoint, apply in batches,
serve read queries over NATS, and rebuild from sequence 1 on request.

DuckDB lets one process write a file, so `vagent up` owns the read store and the
CLI asks it over request/reply (`vagent.query.<name>`); with no service running,
the CLI opens the file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bus.admin import last_seq
from bus.client import Bus, Message, Subscription
from bus.health import INTERVAL, Heartbeat, beat, forget, instance_id
from bus.log import Entry, read
from bus.streams import STREAMS
from bus.subjects import control, query
from projections.base import Projection
from projections.registry import PROJECTIONS
from projections.store import ProjectionFailed, ReadStore

log = logging.getLogger("vagent.projections")
T = TypeVar("T")
STORE_FILE = "read.duckdb"
HEARTBEAT_NAME = "projections"
BATCH = 1000
FRESH = "$fresh"  # query parameter: answer only once the streams' current ends are applied
FRESH_TIMEOUT = 5.0


def stream_subjects(stream: str) -> str:
    return next(s.subjects[0] for s in STREAMS if s.name == stream)


def store_path(data_dir: Path) -> Path:
    return data_dir / STORE_FILE


async def stream_last_seq(bus: Bus, stream: str) -> int:
    return await last_seq(bus, stream)


def by_stream(projections: Sequence[Projection]) -> dict[str, list[Projection]]:
    """The projections that read each stream: the stream is read once for all of them."""
    groups: dict[str, list[Projection]] = {}
    for projection in projections:
        for stream in projection.streams:
            groups.setdefault(stream, []).append(projection)
    return groups


async def catch_up(bus: Bus, store: ReadStore, projections: Sequence[Projection], stream: str) -> None:
    """Apply everything up to the stream's current end to its projections (no live follow)."""
    last = await stream_last_seq(bus, stream)
    start = min(store.checkpoint(p.name, stream) for p in projections) + 1
    if last < start:
        return
    batch: list[Entry] = []
    async for entry in read(bus, stream, stream_subjects(stream), from_seq=start, until_seq=last):
        batch.append(entry)
        if len(batch) >= BATCH:
            await asyncio.to_thread(store.apply_all, projections, stream, batch)
            batch = []
    if batch:
        await asyncio.to_thread(store.apply_all, projections, stream, batch)


async def rebuild(bus: Bus, path: Path) -> dict[str, int]:
    """Build every read model from sequence 1 into a fresh file, then swap it in."""
    fresh = path.with_name(path.name + ".rebuild")
    for leftover in (fresh, Path(str(fresh) + ".wal")):
        leftover.unlink(missing_ok=True)
    projections = [cls() for cls in PROJECTIONS]
    store = ReadStore(fresh, projections)
    try:
        for stream, group in by_stream(projections).items():
            await catch_up(bus, store, group, stream)
        counts = {t: len(store.table(t)) for p in projections for t in p.tables}
        store.db.execute("CHECKPOINT")
    finally:
        store.close()
    os.replace(fresh, path)
    Path(str(path) + ".wal").unlink(missing_ok=True)
    return counts


class ProjectionService:
    def __init__(self, bus: Bus, data_dir: Path) -> None:
        self.bus = bus
        self.path = store_path(data_dir)
        self.projections = [cls() for cls in PROJECTIONS]
        self.store: ReadStore | None = None
        self._lock = asyncio.Lock()  # one DuckDB writer; queries and rebuilds wait their turn
        self._feeders: list[asyncio.Task[None]] = []
        self._subs: list[Subscription] = []
        self.errors = 0
        self.applied = 0
        self._db_calls: set[asyncio.Future[Any]] = set()
        self._instance = instance_id()
        # The last sequence applied per (projection, stream): what a fresh query waits for.
        self._applied_seq: dict[tuple[str, str], int] = {}
        self._progress = asyncio.Condition()
        self._started_ts = time.time_ns()

    async def start(self) -> None:
        self.store = ReadStore(self.path, self.projections)
        self._start_feeders()
        for projection in self.projections:
            for name, sql in projection.queries().items():
                self._subs.append(await self.bus.subscribe(query(name),
                                                           self._query_handler(projection, sql)))
        self._subs.append(await self.bus.subscribe(control("projections.rebuild"), self._rebuild))
        self._heartbeat = asyncio.create_task(self._beat())
        log.info("projections started", extra={"store": str(self.path),
                                                "projections": ",".join(p.name for p in self.projections)})

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a DuckDB call in a thread. A cancelled caller does not stop the thread, so the
        call is tracked: stop() waits for it before closing the connection under it."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._db_calls.add(future)
        future.add_done_callback(self._db_calls.discard)
        return await asyncio.shield(future)

    async def stop(self) -> None:
        self._heartbeat.cancel()
        with contextlib.suppress(Exception):
            await forget(self.bus, HEARTBEAT_NAME, self._instance)
        for sub in self._subs:
            await sub.stop()
        await self._stop_feeders()
        if self._db_calls:
            await asyncio.wait(set(self._db_calls))
        if self.store:
            self.store.close()
            self.store = None

    async def caught_up(self, timeout: float = 10.0, *, only: Iterable[str] | None = None) -> None:
        """Wait until every projection (or those named in `only`) has applied its streams'
        current ends."""
        names = set(only) if only is not None else None
        async with asyncio.timeout(timeout):
            for projection in self.projections:
                if names is None or projection.name in names:
                    await self._fresh(projection, timeout)

    def _start_feeders(self) -> None:
        assert self.store is not None
        for stream, group in by_stream(self.projections).items():
            for projection in group:
                self._applied_seq[(projection.name, stream)] = self.store.checkpoint(projection.name,
                                                                                     stream)
            self._feeders.append(asyncio.create_task(self._feed(group, stream)))

    async def _stop_feeders(self) -> None:
        # A feeder adds feeders (a failing projection goes on alone), so the list is taken
        # whole, and again should one have been added meanwhile. asyncio.wait, not awaiting
        # each task under suppress(CancelledError): that would swallow a cancellation of
        # this stop itself.
        while self._feeders:
            feeders, self._feeders = self._feeders, []
            for task in feeders:
                task.cancel()
            await asyncio.wait(feeders)
            for task in feeders:
                if not task.cancelled() and task.exception() is not None:
                    log.error("projection feed ended", exc_info=task.exception())

    async def _feed(self, projections: list[Projection], stream: str) -> None:
        while True:
            try:
                failed = await self._follow(projections, stream)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception:
                # The stream's reader failed (NATS away): its checkpoints did not move, so
                # it resumes from the same events after a pause.
                self.errors += 1
                log.exception("projection feed failed", extra={"stream": stream})
                await asyncio.sleep(1)
                continue
            if len(failed) < len(projections):
                # The others go on at once on a reader of their own: were they to re-read
                # from the failing one's checkpoint, they would gain one batch per retry.
                # Each failing projection retries alone, from its own checkpoint.
                projections = [p for p in projections if p not in failed]
                self._feeders.extend(asyncio.create_task(self._feed([p], stream))
                                     for p in failed)
            else:
                await asyncio.sleep(1)  # a bug or a bad event: retry the same event later

    async def _follow(self, projections: list[Projection], stream: str) -> list[Projection]:
        """Read the stream once for all its projections, from the oldest of their checkpoints
        (each skips what it applied before), and apply each batch to all of them in one
        transaction. Returns the projections that raised, once one did."""
        assert self.store is not None
        queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize=10 * BATCH)
        start = min(self.store.checkpoint(p.name, stream) for p in projections) + 1

        async def follow() -> None:
            async for entry in read(self.bus, stream, stream_subjects(stream), from_seq=start):
                await queue.put(entry)

        reader = asyncio.create_task(follow())
        get: asyncio.Future[Entry] | None = None
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    reader.result()  # the reader died: raise its error
                    continue
                batch = [get.result()]
                while not queue.empty() and len(batch) < BATCH:
                    batch.append(queue.get_nowait())
                failed = await self._apply(projections, stream, batch)
                if failed:
                    self.errors += 1
                    return failed
        finally:
            if get is not None:
                get.cancel()
            reader.cancel()
            # The reader ends promptly: bus.log reads cancellation-safely (bus.next_message).
            # Waited for with asyncio.wait, which leaves a cancellation of this task its own.
            await asyncio.wait({reader})
            if not reader.cancelled():
                reader.exception()  # retrieved: its error, if any, was raised above

    async def _apply(self, projections: list[Projection], stream: str,
                     batch: list[Entry]) -> list[Projection]:
        """Apply a batch to the stream's projections; those that raised (the others are
        applied one by one then, so the healthy ones move on)."""
        assert self.store is not None
        applied: list[Projection] = []
        failed: list[Projection] = []
        async with self._lock:
            try:
                self.applied += await self._in_thread(self.store.apply_all, projections, stream, batch)
                applied = projections
            except ProjectionFailed:
                for projection in projections:
                    try:
                        self.applied += await self._in_thread(self.store.apply, projection, stream, batch)
                        applied.append(projection)
                    except Exception:
                        failed.append(projection)
                        log.exception("projection failed", extra={"projection": projection.name})
        async with self._progress:
            for projection in applied:
                self._applied_seq[(projection.name, stream)] = batch[-1].seq
            self._progress.notify_all()
        return failed

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # NATS away: the next beat will tell
                await beat(self.bus, Heartbeat(
                    name=HEARTBEAT_NAME, instance=self._instance, pid=os.getpid(),
                    started_ts=self._started_ts, ts=time.time_ns(), handled=self.applied,
                    failed=self.errors,
                ))
            await asyncio.sleep(INTERVAL)

    async def _fresh(self, projection: Projection, timeout: float = FRESH_TIMEOUT) -> None:
        """Wait until the projection has applied everything its streams hold right now, so a
        client reads its own writes (an API answers a GET right after its POST)."""
        targets = {s: await stream_last_seq(self.bus, s) for s in projection.streams}

        def reached() -> bool:
            return all(self._applied_seq.get((projection.name, s), 0) >= seq for s, seq in targets.items())

        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(reached)

    def _query_handler(self, projection: Projection, sql: str) -> Callable[[Message], Awaitable[None]]:
        async def handle(msg: Message) -> None:
            try:
                params: dict[str, Any] = json.loads(msg.data or b"{}")
                if params.pop(FRESH, False):
                    await self._fresh(projection)
                async with self._lock:
                    assert self.store is not None
                    columns, rows = await self._in_thread(self.store.query, sql, params)
                answer: dict[str, Any] = {"columns": columns, "rows": rows}
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            await self.bus.publish_core(msg.reply, json.dumps(answer, default=str).encode())

        return handle

    async def _rebuild(self, msg: Message) -> None:
        try:
            async with self._lock:
                await self._stop_feeders()
                if self._db_calls:
                    await asyncio.wait(set(self._db_calls))
                assert self.store is not None
                self.store.close()
                counts = await rebuild(self.bus, self.path)
                self.store = ReadStore(self.path, self.projections)
            self._start_feeders()
            answer: dict[str, Any] = {"tables": counts}
        except Exception as exc:
            log.exception("rebuild failed")
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        await self.bus.publish_core(msg.reply, json.dumps(answer).encode())
