"""Hosting actors: one consumer runner and one heartbeat per actor, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from actors.base import Actor
from actors.registry import actor_class
from bus.client import Bus
from bus.consumer import ConsumerRunner
from bus.health import INTERVAL, Heartbeat, beat, forget, instance_id
from settings.config import Config
from telemetry import metrics

log = logging.getLogger("vagent.actors")


class ActorHost:
    def __init__(self, bus: Bus, actors: Sequence[str | type[Actor] | Actor],
                 config: Config | None = None, data_dir: Path | None = None) -> None:
        self.bus = bus
        if config is not None:
            metrics.configure(config)
        # An instance is hosted as it is: one built with arguments of its own (a replay's LLM).
        self.actors: list[Actor] = [a if isinstance(a, Actor) else
                                    (actor_class(a) if isinstance(a, str) else a)(bus, config, data_dir)
                                    for a in actors]
        self.runners: list[ConsumerRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.instance = instance_id()
        self.started_ts = time.time_ns()

    async def start(self) -> None:
        for actor in self.actors:
            await actor.setup()
            runner = ConsumerRunner(self.bus, actor.consumer_spec(), actor.on_event,
                                    concurrency=actor.concurrency, name=actor.name,
                                    key=actor.ordering_key)
            self.runners.append(runner)
            self._tasks.append(asyncio.create_task(runner.run(), name=f"actor:{actor.name}"))
            log.info("actor started", extra={"actor": actor.name, "consumes": ",".join(actor.consumes)})
        await self._beat_once()  # alive from the moment start() returns
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))

    async def wait(self) -> None:
        """Until an actor's runner dies (an error worth stopping for) or stop() finishes."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and (exc := task.exception()):
                raise exc

    async def stop(self) -> None:
        """Finish in-flight events (they ack), then release every actor."""
        for runner in self.runners:
            runner.stop()
        runner_tasks = [t for t in self._tasks if t.get_name().startswith("actor:")]
        if runner_tasks:
            await asyncio.wait(runner_tasks, timeout=60)
        for task in self._tasks:
            task.cancel()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                await forget(self.bus, actor.name, self.instance)
            await actor.teardown()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            await self._beat_once()

    async def _beat_once(self) -> None:
        for actor, runner in zip(self.actors, self.runners, strict=True):
            try:
                await beat(self.bus, Heartbeat(
                    name=actor.name, instance=self.instance, pid=os.getpid(),
                    started_ts=self.started_ts, ts=time.time_ns(),
                    handled=runner.handled, failed=runner.failed,
                ))
            except Exception as exc:  # NATS away: the next beat will tell
                log.debug("heartbeat failed: %r", exc)
