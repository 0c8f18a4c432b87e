"""Reading the durable log: one aggregate's history, or a stream from a sequence on.

An aggregate's history is read with batched direct gets (no consumer to create: one
round trip per thousand events), checked against the last sequence the stream's leader
reports; `LogCache` then keeps it and reads only what was appended since. Following a
stream uses ordered consumers: ephemeral, flow-controlled, re-created by the client on a
gap, so the reader sees every event exactly once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from bus.client import Bus, next_message
from bus.streams import STREAM_BY_AGGREGATE
from bus.subjects import aggregate_events, event_subject
from schemas import DecodeError, Event, check_token, decode


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored message: its stream sequence, subject, headers and decoded event
    (None if it is not a decodable event; `error` says why)."""

    stream: str
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes
    event: Event | None
    error: str | None = None


def _entry(stream: str, msg: Msg) -> Entry:
    return _decoded(stream, msg.metadata.sequence.stream, msg.subject, dict(msg.headers or {}),
                    msg.data)


def _decoded(stream: str, seq: int, subject: str, headers: dict[str, str], data: bytes) -> Entry:
    try:
        return Entry(stream, seq, subject, headers, data, decode(data))
    except DecodeError as exc:
        return Entry(stream, seq, subject, headers, data, None, str(exc))


async def last_sequence(bus: Bus, stream: str, subject_filter: str) -> int:
    """Stream sequence of the newest message matching `subject_filter`, 0 if none."""
    try:
        msg = await bus.js.get_last_msg(stream, subject_filter)
    except nats.js.errors.NotFoundError:
        return 0
    return msg.seq or 0


async def last_event(bus: Bus, aggregate: str, aggregate_id: str, event_type: str) -> Event | None:
    """The aggregate's newest event of one type (a direct get: no consumer), or None."""
    check_token(f"{aggregate} id", aggregate_id)
    subject = event_subject(aggregate, aggregate_id, event_type)
    try:
        msg = await bus.js.get_last_msg(STREAM_BY_AGGREGATE[aggregate], subject)
    except nats.js.errors.NotFoundError:
        return None
    try:
        return decode(msg.data or b"")
    except DecodeError:
        return None


async def load(bus: Bus, aggregate: str, aggregate_id: str) -> tuple[list[Entry], int]:
    """One aggregate's events in order, and the last sequence (for a conditional append).
    Raises ValueError for an id that is not a plain token (a wildcard would read many)."""
    stream, subject = _aggregate(aggregate, aggregate_id)
    last = await last_sequence(bus, stream, subject)
    if last == 0:
        return [], 0
    return await _range(bus, stream, subject, 1, last), last


class LogCache:
    """The aggregate logs this process read lately, each brought up to date on the next
    load by reading only the events appended since: a long session's every turn no longer
    reads its whole history again. Every load still asks the stream's leader for the last
    sequence, so what it returns is never stale.

    An aggregate's log only grows; one found shorter than its copy (purged) is read again.
    """

    def __init__(self, bus: Bus, size: int = 256) -> None:
        self.bus = bus
        self.size = size
        self._logs: OrderedDict[tuple[str, str], tuple[list[Entry], int]] = OrderedDict()

    async def load(self, aggregate: str, aggregate_id: str) -> tuple[list[Entry], int]:
        """As `load`, from the cached copy plus what is new."""
        stream, subject = _aggregate(aggregate, aggregate_id)
        last = await last_sequence(self.bus, stream, subject)
        key = (aggregate, aggregate_id)
        entries, seen = self._logs.pop(key, ([], 0))
        if last < seen:
            entries, seen = [], 0
        if last > seen:
            entries = entries + await _range(self.bus, stream, subject, seen + 1, last)
        if last:
            self._logs[key] = (entries, last)
            if len(self._logs) > self.size:
                self._logs.popitem(last=False)
        return list(entries), last


def _aggregate(aggregate: str, aggregate_id: str) -> tuple[str, str]:
    check_token(f"{aggregate} id", aggregate_id)
    return STREAM_BY_AGGREGATE[aggregate], aggregate_events(aggregate, aggregate_id)


async def _range(bus: Bus, stream: str, subject: str, first: int, last: int) -> list[Entry]:
    """The entries matching `subject` from sequence `first` through `last`."""
    entries = await _direct_range(bus, stream, subject, first, last)
    if entries is None:  # a lagging replica answered, or none did: the leader's consumer
        entries = [e async for e in read(bus, stream, subject, from_seq=first, until_seq=last)]
    return entries


_BATCH = 1024  # messages per direct-get request
_DIRECT_TIMEOUT = 2.0  # seconds without an answer before the consumer path is taken
_DIRECT_HEADERS = frozenset({"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp",
                             "Nats-Num-Pending", "Nats-Last-Sequence"})


async def _direct_range(bus: Bus, stream: str, subject: str, first: int,
                        last: int) -> list[Entry] | None:
    """`_range` by batched direct gets; None when the answers stop short of `last`: any
    replica may answer a direct get, and a follower can be behind the leader."""
    entries: list[Entry] = []
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    try:
        seq = first
        while seq <= last:
            request = {"seq": seq, "next_by_subj": subject, "batch": min(_BATCH, last - seq + 1)}
            await bus.nc.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request),
                                 reply=inbox)
            while True:
                msg = await next_message(sub, _DIRECT_TIMEOUT)
                status = (msg.headers or {}).get("Status")
                if status == "204":
                    break  # the end of this batch
                if status is not None:
                    return None  # 404: this replica has nothing more; or an error
                entry = _direct_entry(stream, msg)
                if entry.seq <= last:
                    entries.append(entry)
                seq = entry.seq + 1
    except (nats.errors.Error, TimeoutError, KeyError, ValueError):
        return None
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return entries


def _direct_entry(stream: str, msg: Msg) -> Entry:
    headers = msg.headers or {}
    return _decoded(stream, int(headers["Nats-Sequence"]), headers["Nats-Subject"],
                    {k: v for k, v in headers.items() if k not in _DIRECT_HEADERS}, msg.data)


async def read(bus: Bus, stream: str, subject_filter: str, *, from_seq: int = 1,
               until_seq: int | None = None, idle_timeout: float | None = None
               ) -> AsyncIterator[Entry]:
    """Entries of `stream` matching `subject_filter` from `from_seq` on.

    Stops after `until_seq`, or after `idle_timeout` seconds without a message;
    with neither it follows the stream forever (live tail), across server restarts.
    """
    next_seq = max(from_seq, 1)
    while True:
        sub = await _ordered(bus, stream, subject_filter, next_seq)
        try:
            while True:
                try:
                    msg = await next_message(sub, idle_timeout or _STALL_CHECK)
                except (nats.errors.TimeoutError, TimeoutError):
                    if idle_timeout is not None:
                        return
                    if await _stalled(bus, stream, subject_filter, next_seq):
                        break  # the server lost our ephemeral consumer (a restart): re-create it
                    continue
                entry = _entry(stream, msg)
                next_seq = entry.seq + 1
                yield entry
                if until_seq is not None and (entry.seq >= until_seq
                                              or msg.metadata.num_pending == 0):
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


_STALL_CHECK = 2.0  # seconds of silence after which a follower checks it is not stranded


async def _ordered(bus: Bus, stream: str, subject_filter: str,
                   start: int) -> JetStreamContext.PushSubscription:
    while True:
        try:
            return await bus.js.subscribe(
                subject_filter, stream=stream, ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                config=api.ConsumerConfig(opt_start_seq=start),
            )
        except (nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError,
                nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            await asyncio.sleep(0.5)  # NATS is coming back


async def _stalled(bus: Bus, stream: str, subject_filter: str, next_seq: int) -> bool:
    try:
        return await last_sequence(bus, stream, subject_filter) >= next_seq
    except (nats.errors.Error, TimeoutError):
        return False  # cannot tell now; ask again after the next silence
