"""What the streams hold and how far each consumer is, for `vagent streams` and health pages."""

from __future__ import annotations

from dataclasses import dataclass, field

import nats.js.errors

from bus.client import Bus
from bus.streams import STREAMS


@dataclass(frozen=True)
class ConsumerState:
    name: str
    pending: int  # not yet delivered
    ack_pending: int  # delivered, awaiting ack
    redelivered: int


@dataclass(frozen=True)
class StreamState:
    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    replicas: int
    consumers: list[ConsumerState] = field(default_factory=list)


async def stream_states(bus: Bus) -> list[StreamState]:
    out = []
    for spec in STREAMS:
        try:
            out.append(await stream_state(bus, spec.name, consumers=True))
        except nats.js.errors.NotFoundError:
            continue
    return out


async def stream_state(bus: Bus, name: str, *, consumers: bool = False) -> StreamState:
    """One stream's counts and sequences; its durable consumers too with `consumers`."""
    info = await bus.js.stream_info(name)
    durables = [
        ConsumerState(c.name, c.num_pending or 0, c.num_ack_pending or 0, c.num_redelivered or 0)
        for c in (await bus.js.consumers_info(name) if consumers else [])
        if c.config.durable_name  # ordered readers are ephemeral: not worth listing
    ]
    return StreamState(name, info.state.messages, info.state.bytes, info.state.first_seq,
                       info.state.last_seq, info.config.num_replicas or 1,
                       sorted(durables, key=lambda c: c.name))


async def last_seq(bus: Bus, stream: str) -> int:
    """The stream's last sequence: what a reader that wants everything so far reads up to."""
    return (await stream_state(bus, stream)).last_seq


async def purge(bus: Bus, stream: str, subject: str | None = None) -> None:
    """Remove the stream's messages, or only those on `subject` (a wildcard may match)."""
    await bus.js.purge_stream(stream, subject=subject)


async def delete_consumer(bus: Bus, stream: str, durable: str) -> None:
    await bus.js.delete_consumer(stream, durable)
