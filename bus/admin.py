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
            info = await bus.js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            continue
        consumers = [
            ConsumerState(c.name, c.num_pending or 0, c.num_ack_pending or 0, c.num_redelivered or 0)
            for c in await bus.js.consumers_info(spec.name)
            if c.config.durable_name  # ordered readers are ephemeral: not worth listing
        ]
        out.append(StreamState(spec.name, info.state.messages, info.state.bytes,
                               info.state.first_seq, info.state.last_seq,
                               info.config.num_replicas or 1, sorted(consumers, key=lambda c: c.name)))
    return out
