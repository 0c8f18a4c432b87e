"""The actor model: an actor consumes event types and emits events, nothing else.

An actor never calls another; it reads its input from the bus and writes its
effects back to it. Emitted events get ids derived from the causing event, so a
redelivered input re-emits identical ids and JetStream stores each effect once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar, TypeVar

import msgspec

from bus.client import Bus, Stored
from bus.consumer import ConsumerSpec, Delivery, NotNow
from bus.log import Entry, LogCache
from bus.streams import STREAM_BY_AGGREGATE
from bus.subjects import event_type_filter
from bus.trace import child_traceparent
from schemas import Event, derived_id
from settings.config import Config
from telemetry import tracing

E = TypeVar("E", bound=Event)


class Context:
    """What a handler may do while it handles one event, and what work it started (a
    session's audio pipeline, its speech) may do later in that event's name. Only event
    types the actor declares in `emits` get through."""

    def __init__(self, actor: Actor, cause: Event, delivery: Delivery | None = None) -> None:
        self.actor = actor
        self.cause = cause
        self.delivery = delivery
        # Without a delivery (work driven by a session's audio, not by this one event) each
        # effect starts a trace of its own.
        self.traceparent = child_traceparent(delivery.traceparent) if delivery else None
        self._emitted = 0

    def next_id(self) -> str:
        """The id the next emit would get, taken now: an id reserved before a wait does not
        depend on what else was emitted meanwhile."""
        event_id = derived_id(self.cause.id, self.actor.name, self._emitted)
        self._emitted += 1
        return event_id

    def stamp(self, event: E, *, id: str | None = None, causation_id: str | None = None) -> E:
        """`event` as this actor emits it: a declared type, with an id derived from the cause
        (or `id`, made the same way by the caller) and its causation."""
        if event.type not in self.actor.emits:
            raise ValueError(f"actor {self.actor.name} does not declare {event.type!r} in emits")
        return msgspec.structs.replace(event, id=id or self.next_id(),
                                       causation_id=causation_id or self.cause.id)

    async def emit(self, event: Event, *, id: str | None = None,
                   causation_id: str | None = None, traceparent: str | None = None) -> Stored:
        """Append an effect to the log; returns once JetStream has it on disk. `traceparent`:
        the span it comes from, when not the handler's own."""
        return await self.publish(self.stamp(event, id=id, causation_id=causation_id),
                                  traceparent=traceparent)

    def emit_soon(self, event: Event) -> asyncio.Task[Stored]:
        """`emit` begun now and awaited later, so the append overlaps other work. Numbered
        now: ids still follow the order of the calls."""
        return asyncio.create_task(self.publish(self.stamp(event)))

    async def publish(self, stamped: Event, *, traceparent: str | None = None) -> Stored:
        """Append an event `stamp` made (an outbox that keeps a session's effects in order)."""
        return await self.actor.bus.publish(stamped, traceparent=traceparent or self.traceparent)

    async def live(self, event: Event, *, causation_id: str | None = None) -> None:
        """Publish a derivable, live-only event (token deltas, partial transcripts)."""
        await self.actor.bus.publish_live(
            msgspec.structs.replace(event, causation_id=causation_id or self.cause.id))

    async def history(self) -> list[Entry]:
        """The cause's aggregate log, up to and including the cause."""
        entries, _ = await self.actor.log.load(self.cause.aggregate, self.cause.aggregate_id)
        if self.delivery is None:
            return entries
        return [e for e in entries if e.seq <= self.delivery.seq]


class Actor:
    name: ClassVar[str]
    consumes: ClassVar[tuple[str, ...]]  # event types, e.g. ("user.text",)
    emits: ClassVar[frozenset[str]]
    aggregate: ClassVar[str] = "session"
    concurrency: ClassVar[int] = 16  # aggregates handled at once; one at a time per aggregate
    max_deliver: ClassVar[int] = 5
    ack_wait: ClassVar[float] = 30.0

    def __init__(self, bus: Bus, config: Config | None = None, data_dir: Path | None = None) -> None:
        self.bus = bus
        # What the process read at start; None: the built-in defaults (tests, tools).
        self.config = config if config is not None else Config()
        # The process's data directory; None: none (the read models only over the bus, and an
        # actor that keeps files refuses to start).
        self.data_dir = data_dir
        self.log = LogCache(bus)  # aggregates this actor handles again and again (a session's turns)

    async def setup(self) -> None:
        """Open clients and load models before the first event."""

    async def teardown(self) -> None:
        """Release what setup opened, after the last in-flight event finished."""

    async def handle(self, event: Event, ctx: Context) -> None:
        raise NotImplementedError

    def consumer_spec(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=STREAM_BY_AGGREGATE[self.aggregate],
            durable=self.name,
            subjects=tuple(event_type_filter(self.aggregate, t) for t in self.consumes),
            max_deliver=self.max_deliver,
            ack_wait=self.config.actors.ack_wait or self.ack_wait,
            from_new=True,
        )

    def ordering_key(self, event: Event) -> str:
        """Events with the same key are handled one at a time, in log order (default: per session)."""
        return event.aggregate_id

    async def on_event(self, event: Event, delivery: Delivery) -> None:
        ctx = Context(self, event, delivery)
        if not tracing.enabled():
            await self.handle(event, ctx)
            return
        # The handler's span is what its effects name as their parent, in any process.
        later: NotNow | None = None
        with tracing.span(f"{self.name} {event.type}", delivery.traceparent,
                          attributes=tracing.event_attributes(event)) as span:
            if span is not None:
                ctx.traceparent = tracing.traceparent(span)
            try:
                await self.handle(event, ctx)
            except NotNow as exc:  # put back for later (a full worker): not a failed span
                later = exc
                if span is not None:
                    span.add_event("deferred", {"vagent.retry_s": exc.delay})
        if later is not None:
            raise later

