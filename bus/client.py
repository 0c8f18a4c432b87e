"""The connection to NATS and every way vagent writes to it.

This package is the only one that imports `nats`; everything else speaks in
vagent events (schemas) and the small types defined here.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import api

from bus import streams
from bus.config import nats_url, replicas
from bus.errors import BatchError, BusError, ConflictError, Unreachable
from bus.subjects import aggregate_events, live, subject_of
from bus.trace import new_traceparent
from schemas import Event, encode
from telemetry import metrics

log = logging.getLogger("vagent.bus")

# Failures after which the same publish (same Nats-Msg-Id) is simply sent again.
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    asyncio.TimeoutError,
)
WRONG_LAST_SEQUENCE = 10071
MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Stored:
    """JetStream's acknowledgement: the event is durable at `seq` of `stream`."""

    stream: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A core-NATS message as handed to subscribers."""

    subject: str
    data: bytes
    headers: dict[str, str]
    reply: str


MessageHandler = Callable[[Message], Awaitable[None]]


class Subscription:
    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    async def stop(self) -> None:
        try:
            await self._sub.unsubscribe()
        except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
            pass


async def next_message(sub: NatsSubscription, timeout: float) -> Msg:
    """The next message of a subscription made without a callback; TimeoutError after
    `timeout` seconds without one.

    In place of nats-py's `Subscription.next_msg`, which reads in a task of its own under
    `asyncio.wait_for`: on Python 3.11 that swallows a cancellation meeting an arriving
    message (CPython gh-86296), so a cancelled reader got the message and read on, and
    whoever awaited its end (ProjectionService.stop, so `vagent up`'s Ctrl-C) waited forever.
    Here the caller's own task awaits the subscription's queue under `asyncio.timeout`: a
    cancellation always ends the wait, and a message it met stays queued. The bookkeeping is
    nats-py's own for a consumed message (as its `messages` iterator does): the pending size
    counts toward its slow-consumer limit, and an ordered consumer answers flow control by
    what left the queue.
    """
    if sub._cb is not None:
        raise BusError("next_message reads a subscription made without a callback")
    if sub._conn.is_closed:
        raise nats.errors.ConnectionClosedError
    queue = sub._pending_queue
    if queue.empty():
        try:
            async with asyncio.timeout(timeout):
                msg = await queue.get()
        except TimeoutError:
            if sub._conn.is_closed:
                raise nats.errors.ConnectionClosedError from None
            raise
    else:
        msg = queue.get_nowait()
    sub._pending_size -= len(msg.data)
    queue.task_done()
    return msg


async def _refused(servers: list[str], timeout: float) -> bool:
    """Whether every server refuses a TCP connection: nothing listens there. nats-py retries a
    refused first connect until its timeout; a command started with no stack running says so
    at once instead. A server that accepts, or an address that does not answer, is left to
    nats-py (and its timeout)."""
    loop = asyncio.get_running_loop()
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            return False
        try:
            addresses = await loop.getaddrinfo(parts.hostname, parts.port or 4222,
                                               type=socket.SOCK_STREAM)
        except OSError:
            return False
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(sock, address)
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    return False
            except TimeoutError:
                return False
            else:
                return False
            finally:
                sock.close()
    return True


class Bus:
    def __init__(self, nc: NATS, url: str) -> None:
        self.nc = nc
        self.url = url
        self.js = nc.jetstream(timeout=5.0)

    # --- connection -----------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str | None = None, *, name: str = "vagent",
                      timeout: float = 5.0) -> Bus:
        url = nats_url(url)

        async def disconnected() -> None:
            if not nc.is_closed and not nc.is_draining:
                log.warning("nats disconnected url=%s", url)

        async def reconnected() -> None:
            log.info("nats reconnected url=%s", nc.connected_url.netloc if nc.connected_url else url)

        async def error(exc: Exception) -> None:
            log.debug("nats error: %r", exc)

        if await _refused(url.split(","), timeout):
            raise Unreachable(f"cannot reach NATS at {url}: connection refused")
        nc = NATS()
        try:
            # Once connected, reconnect forever; but the first connect must answer in time
            # (nats.py would otherwise keep retrying it too).
            await asyncio.wait_for(nc.connect(
                servers=url.split(","), name=name,
                connect_timeout=timeout,  # type: ignore[arg-type]  # nats-py annotates seconds as int; a float works
                allow_reconnect=True, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,  # type: ignore[arg-type]  # nats-py annotates seconds as int; a float works
                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
            ), timeout * 2)
        except (TimeoutError, OSError, nats.errors.NoServersError, nats.errors.TimeoutError) as exc:
            await nc.close()
            reason = str(exc) or f"no answer in {timeout * 2:.0f}s"
            raise BusError(f"cannot reach NATS at {url}: {reason}") from None
        return cls(nc, url)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except (TimeoutError, nats.errors.ConnectionClosedError, nats.errors.TimeoutError):
            await self.nc.close()

    # --- declaration ----------------------------------------------------------------

    async def declare(self) -> None:
        """Create or update every stream and bucket of `bus.streams` (idempotent)."""
        r = replicas()
        for spec in streams.STREAMS:
            config = api.StreamConfig(
                name=spec.name, description=spec.description, subjects=list(spec.subjects),
                storage=api.StorageType.FILE, num_replicas=r, max_age=spec.max_age,
                duplicate_window=spec.duplicate_window, allow_atomic=spec.atomic or None,
                allow_direct=True,
            )
            try:
                await self.js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(config)
            else:
                await self.js.update_stream(config)
        for bucket in streams.KV_BUCKETS:
            await self.js.create_key_value(api.KeyValueConfig(
                bucket=bucket.name, description=bucket.description, ttl=bucket.ttl or None,
                history=bucket.history, replicas=r,
                # a marker TTL turns on per-message TTLs for the bucket's stream
                limit_marker_ttl=60.0 if bucket.per_key_ttl else None,
            ))
        for bucket in streams.OBJECT_BUCKETS:
            await self.js.create_object_store(bucket.name, api.ObjectStoreConfig(
                bucket=bucket.name, description=bucket.description, replicas=r,
            ))

    # --- the durable log ------------------------------------------------------------

    async def publish(self, event: Event, *, traceparent: str | None = None,
                      timeout: float = 15.0) -> Stored:
        """Append `event` to its aggregate's log; safe to retry (deduplicated by event id)."""
        headers = {api.Header.MSG_ID: event.id, "traceparent": traceparent or new_traceparent()}
        return _observed(await self._publish_js(subject_of(event), encode(event), headers, timeout),
                         event)

    async def append(self, event: Event, expected_last_seq: int, *,
                     traceparent: str | None = None, timeout: float = 15.0) -> Stored:
        """Append only if the aggregate's last event is still at `expected_last_seq` (0: none).

        Raises ConflictError when another writer appended in between.
        """
        headers = {
            api.Header.MSG_ID: event.id,
            "traceparent": traceparent or new_traceparent(),
            api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected_last_seq),
            "Nats-Expected-Last-Subject-Sequence-Subject":
                aggregate_events(event.aggregate, event.aggregate_id),
        }
        try:
            return _observed(await self._publish_js(subject_of(event), encode(event), headers,
                                                    timeout), event)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                # A retry of an append that was stored but whose ack was lost finds its own
                # event last: the server checks the sequence before the duplicate id.
                stored = await self._stored_last(event)
                if stored is not None:
                    return stored
                raise ConflictError(subject_of(event), expected_last_seq,
                                    exc.description or "") from None
            raise

    async def _stored_last(self, event: Event) -> Stored | None:
        """The aggregate's last stored message, if it is `event` itself."""
        stream = streams.STREAM_BY_AGGREGATE[event.aggregate]
        try:
            last = await self.js.get_last_msg(stream, aggregate_events(event.aggregate,
                                                                        event.aggregate_id))
        except nats.js.errors.NotFoundError:
            return None
        if (last.headers or {}).get(api.Header.MSG_ID) == event.id:
            return Stored(stream, last.seq or 0, duplicate=True)
        return None

    async def append_batch(self, events: Sequence[Event], *, expected_last_seq: int | None = None,
                           traceparent: str | None = None, timeout: float = 15.0) -> Stored:
        """Store all `events` or none (JetStream atomic batch, ADR-50).

        With `expected_last_seq`, the batch is also conditional on the first event's aggregate.
        """
        if not events:
            raise ValueError("empty batch")
        if len(events) > MAX_BATCH:
            raise ValueError(f"a batch holds at most {MAX_BATCH} events")
        batch_id = events[0].id
        trace = traceparent or new_traceparent()
        inbox = self.nc.new_inbox()
        replies: asyncio.Queue[Msg] = asyncio.Queue()

        async def collect(msg: Msg) -> None:
            replies.put_nowait(msg)

        sub = await self.nc.subscribe(inbox, cb=collect)
        try:
            for n, event in enumerate(events, start=1):
                headers = {
                    api.Header.MSG_ID: event.id, "traceparent": trace,
                    api.Header.BATCH_ID: batch_id, api.Header.BATCH_SEQUENCE: str(n),
                }
                if n == 1 and expected_last_seq is not None:
                    headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_last_seq)
                    headers["Nats-Expected-Last-Subject-Sequence-Subject"] = aggregate_events(
                        event.aggregate, event.aggregate_id)
                if n == len(events):
                    headers[api.Header.BATCH_COMMIT] = "1"
                # The first message asks for a reply so a refused batch fails fast.
                reply = inbox if n in (1, len(events)) else ""
                await self.nc.publish(subject_of(event), encode(event), reply=reply, headers=headers)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusError(f"no answer to batch {batch_id} in {timeout}s")
                try:
                    # Not wait_for: on 3.11 it can swallow a cancellation (see next_message).
                    async with asyncio.timeout(remaining):
                        reply_msg = await replies.get()
                except TimeoutError:
                    continue
                if not reply_msg.data:
                    continue  # the first message's "batch started" answer
                answer = json.loads(reply_msg.data)
                try:
                    if "error" in answer:
                        raise nats.js.errors.APIError.from_error(answer["error"])
                except nats.js.errors.APIError as exc:
                    if exc.err_code == WRONG_LAST_SEQUENCE:
                        raise ConflictError(subject_of(events[0]), expected_last_seq or 0,
                                            exc.description or "") from None
                    raise BatchError(f"batch {batch_id} rejected: {exc.description}") from None
                if "batch" not in answer:
                    continue
                return _observed(Stored(answer["stream"], answer["seq"], bool(answer.get("duplicate"))),
                                 *events)
        finally:
            await sub.unsubscribe()

    async def _publish_js(self, subject: str, data: bytes, headers: dict[str, str],
                          timeout: float) -> Stored:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                ack = await self.js.publish(subject, data, headers=dict(headers), timeout=2.0)
                return Stored(ack.stream, ack.seq, bool(ack.duplicate))
            except _TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise BusError(f"publish to {subject} not acknowledged in {timeout}s: "
                                   f"{type(exc).__name__}") from None
                log.warning("publish to %s: %s; retrying", subject, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # --- core NATS: live events, audio, request/reply --------------------------------

    async def publish_live(self, event: Event) -> None:
        """Publish a derivable event (deltas, partial transcripts) on its live subject only."""
        await self.nc.publish(live(event.aggregate_id, event.type), encode(event))
        metrics.appended(event)
        # nats-py only buffers a publish; its flusher task writes it. Yield once so a delta
        # is on the wire before this task goes on parsing the next chunk (measured: ~1 ms
        # off the first delta under a busy loop).
        await asyncio.sleep(0)

    async def publish_core(self, subject: str, data: bytes,
                           headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(subject, data, headers=headers)

    async def subscribe(self, subject: str, handler: MessageHandler, *,
                        queue: str = "") -> Subscription:
        async def deliver(msg: Msg) -> None:
            await handler(Message(msg.subject, msg.data, dict(msg.headers or {}), msg.reply))

        return Subscription(await self.nc.subscribe(subject, queue=queue, cb=deliver))

    async def request(self, subject: str, data: bytes = b"", timeout: float = 5.0) -> bytes:
        try:
            reply = await self.nc.request(subject, data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise BusError(f"nobody serves {subject}") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise BusError(f"no answer on {subject} in {timeout}s") from None
        return reply.data

    async def flush(self) -> None:
        await self.nc.flush()


def _observed(stored: Stored, *events: Event) -> Stored:
    """`stored` as it was, after the metrics saw `events` (unless a retry found them stored)."""
    if not stored.duplicate:
        for event in events:
            metrics.appended(event)
    return stored
