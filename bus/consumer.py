"""Durable pull consumers with vagent's delivery rules.

- A message is acknowledged only after its handler returned, and a handler's
  emitted events are awaited JetStream acknowledgements: nothing is acked before
  its effect is durable.
- A failing handler is nak'ed with a growing delay; on the last allowed delivery
  the message is terminated with the error as reason.
- Bytes that are not an event are terminated at once, never retried.
- JetStream turns terminations and exhausted deliveries into advisories, which the
  DEADLETTER stream stores (see `bus.deadletter`).
- Messages of one key (the session) are handled in order; different keys run
  concurrently up to `concurrency`.
- A handler that cannot take a message yet raises `NotNow`: it is nak'ed with the delay it
  asks for, to be redelivered to any worker of the consumer; not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from bus.client import Bus
from bus.deadletter import dead_letter_count
from schemas import DecodeError, Event, decode
from telemetry import metrics

log = logging.getLogger("vagent.consumer")
STATE_INTERVAL = 5.0  # seconds between reads of a consumer's state for the metrics


class NotNow(Exception):
    """A handler's answer for a message it cannot take yet (a full worker)."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"redeliver in {delay:g} s")
        self.delay = delay


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    subjects: tuple[str, ...]
    max_deliver: int = 5
    ack_wait: float = 30.0
    backoff: tuple[float, ...] = (0.5, 2.0, 5.0, 15.0)  # nak delay after delivery 1, 2, …
    max_ack_pending: int = 1000
    # A new actor starts at new messages: a consumer created today must not answer last
    # month's questions. Once created, the durable consumer remembers its position.
    from_new: bool = False


@dataclass(frozen=True, slots=True)
class Delivery:
    stream: str
    seq: int
    subject: str
    headers: dict[str, str]
    num_delivered: int

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


Handler = Callable[[Event, Delivery], Awaitable[None]]
OrderingKey = Callable[[Event], str]


def by_aggregate(event: Event) -> str:
    return event.aggregate_id
_CONNECTION_TROUBLE = (
    nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError, nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, asyncio.TimeoutError,
)


async def ensure_consumer(bus: Bus, spec: ConsumerSpec) -> None:
    config = api.ConsumerConfig(
        durable_name=spec.durable, ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.NEW if spec.from_new else api.DeliverPolicy.ALL,
        filter_subjects=list(spec.subjects),
        max_deliver=spec.max_deliver, ack_wait=spec.ack_wait,
        max_ack_pending=spec.max_ack_pending,
    )
    try:
        # If it exists with other settings (a new version of the actor), this updates it in place.
        await bus.js.add_consumer(spec.stream, config)
    except nats.js.errors.BadRequestError as exc:
        # Some settings (the start position) cannot change: keep the existing consumer.
        log.warning("consumer kept with its old settings",
                    extra={"consumer": spec.durable, "error": exc.description})


class ConsumerRunner:
    def __init__(self, bus: Bus, spec: ConsumerSpec, handler: Handler, *,
                 concurrency: int = 1, name: str | None = None,
                 key: OrderingKey = by_aggregate) -> None:
        self.bus = bus
        self.spec = spec
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.key = key  # messages with equal keys are handled one at a time, in order
        self.name = name or spec.durable
        self.handled = 0
        self.failed = 0
        self.terminated = 0
        self._stopping = asyncio.Event()
        self._slot = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        await ensure_consumer(self.bus, self.spec)
        psub = await self.bus.js.pull_subscribe_bind(self.spec.durable, stream=self.spec.stream)
        watch = asyncio.create_task(self._watch_state()) if metrics.enabled() else None
        try:
            while not self._stopping.is_set():
                room = self.concurrency - len(self._inflight)
                if room <= 0:
                    self._slot.clear()
                    await self._wait_any(self._slot)
                    continue
                try:
                    msgs = await psub.fetch(room, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except _CONNECTION_TROUBLE as exc:
                    log.warning("fetch failed, retrying", extra={"actor": self.name,
                                                                  "error": type(exc).__name__})
                    await self._wait_any(self._stopping, 0.5)
                    continue
                for msg in msgs:
                    await self._schedule(msg)
            # Graceful stop: let the in-flight messages finish (they ack), fetch no more.
            if self._inflight:
                await asyncio.wait(self._inflight)
        finally:
            if watch is not None:
                watch.cancel()
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    def stop(self) -> None:
        self._stopping.set()
        self._slot.set()

    async def _wait_any(self, event: asyncio.Event, timeout: float | None = None) -> None:
        waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())}
        _, pending = await asyncio.wait(waiters, timeout=timeout,
                                        return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def _schedule(self, msg: Msg) -> None:
        md = msg.metadata
        delivery = Delivery(self.spec.stream, md.sequence.stream, msg.subject,
                            dict(msg.headers or {}), md.num_delivered)
        try:
            event = decode(msg.data)
        except DecodeError as exc:
            await self._term(msg, f"undecodable: {exc}")
            log.error("terminated undecodable message",
                      extra={"actor": self.name, "subject": msg.subject, "seq": delivery.seq,
                             "error": str(exc)})
            return
        metrics.consumed(event)
        key = self.key(event)
        previous = self._tails.get(key)
        task = asyncio.create_task(self._handle(msg, event, delivery, previous))
        self._tails[key] = task
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            if self._tails.get(key) is t:
                del self._tails[key]
            self._slot.set()

        task.add_done_callback(done)

    async def _handle(self, msg: Msg, event: Event, delivery: Delivery,
                      previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            with contextlib.suppress(BaseException):
                await previous
        started = time.perf_counter()
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            await self.handler(event, delivery)
        except NotNow as later:
            keepalive.cancel()
            metrics.handled(self.name, "deferred", time.perf_counter() - started)
            with contextlib.suppress(*_CONNECTION_TROUBLE):  # else redelivered after ack_wait
                await msg.nak(delay=later.delay)
            return
        except Exception as exc:
            keepalive.cancel()
            metrics.handled(self.name, "error", time.perf_counter() - started)
            await self._failed(msg, event, delivery, exc, started)
            return
        finally:
            keepalive.cancel()
        metrics.handled(self.name, "ok", time.perf_counter() - started)
        try:
            # Confirmed ack: a stopping worker knows JetStream has it before it drains.
            await msg.ack_sync(timeout=2.0)
        except _CONNECTION_TROUBLE:
            # The ack is lost: JetStream redelivers, and the re-emitted events are deduplicated.
            log.warning("ack lost", extra={"actor": self.name, "seq": delivery.seq})
        self.handled += 1
        log.info("handled", extra=self._fields(event, delivery, started, "ok"))

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream a long handler (an LLM turn) is still working, so it is not redelivered."""
        while True:
            await asyncio.sleep(self.spec.ack_wait / 3)
            with contextlib.suppress(*_CONNECTION_TROUBLE):
                await msg.in_progress()

    async def _failed(self, msg: Msg, event: Event, delivery: Delivery, exc: Exception,
                      started: float) -> None:
        self.failed += 1
        fields = self._fields(event, delivery, started, "error")  # the log line adds why (exc_info)
        try:
            if delivery.num_delivered >= self.spec.max_deliver:
                await self._term(msg, f"failed {delivery.num_delivered} times: {exc!r}")
                fields["outcome"] = "dead_letter"
            else:
                backoff = self.spec.backoff
                await msg.nak(delay=backoff[min(delivery.num_delivered, len(backoff)) - 1])
        except _CONNECTION_TROUBLE:
            pass  # not acked: JetStream redelivers after ack_wait anyway
        log.error("handler failed", extra=fields, exc_info=exc)

    async def _term(self, msg: Msg, reason: str) -> None:
        """Terminate with a reason; JetStream's advisory carries it to the DEADLETTER stream."""
        self.terminated += 1
        metrics.terminated(self.name)
        with contextlib.suppress(*_CONNECTION_TROUBLE):
            await self.bus.nc.publish(msg.reply, b"+TERM " + reason[:1000].encode())

    async def _watch_state(self) -> None:
        """What waits for this actor, read from JetStream now and every STATE_INTERVAL."""
        while True:
            try:
                info = await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
                metrics.consumer_state(self.name, info.num_pending or 0, info.num_ack_pending or 0,
                                       info.num_redelivered or 0)
                metrics.dead_letters(await dead_letter_count(self.bus))
            except Exception as exc:  # a gauge left as it was; the next read may do
                log.debug("consumer state not read: %r", exc)
            await asyncio.sleep(STATE_INTERVAL)

    def _fields(self, event: Event, delivery: Delivery, started: float,
                outcome: str) -> dict[str, object]:
        return {"actor": self.name, "event": event.type, "aggregate": event.aggregate_id,
                "seq": delivery.seq, "delivered": delivery.num_delivered,
                "ms": round((time.perf_counter() - started) * 1000, 2), "outcome": outcome}
