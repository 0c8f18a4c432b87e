"""Dead letters: JetStream advisories of terminated and max-delivered messages,
stored by the DEADLETTER stream, joined with the message they name."""

from __future__ import annotations

import json
from dataclasses import dataclass

import nats.js.errors

from bus.client import Bus
from bus.log import read
from schemas import DecodeError, decode


@dataclass(frozen=True, slots=True)
class DeadLetter:
    ts: str
    kind: str  # "terminated" | "max_deliveries"
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int
    reason: str
    subject: str | None  # of the original message, if it is still stored
    event_type: str | None


async def dead_letter_count(bus: Bus) -> int:
    """How many dead-letter records are stored."""
    info = await bus.js.stream_info("DEADLETTER")
    return int(info.state.messages)


async def dead_letters(bus: Bus, limit: int = 100) -> list[DeadLetter]:
    info = await bus.js.stream_info("DEADLETTER")
    if info.state.messages == 0:
        return []
    first = max(info.state.first_seq, info.state.last_seq - limit + 1)
    out = []
    async for entry in read(bus, "DEADLETTER", "$JS.EVENT.ADVISORY.CONSUMER.>", from_seq=first,
                            until_seq=info.state.last_seq):
        advisory = json.loads(entry.data)
        kind = "terminated" if advisory.get("type", "").endswith("terminated") else "max_deliveries"
        subject, event_type = await _original(bus, advisory["stream"], advisory["stream_seq"])
        out.append(DeadLetter(
            ts=advisory.get("timestamp", ""), kind=kind, stream=advisory["stream"],
            consumer=advisory["consumer"], stream_seq=advisory["stream_seq"],
            deliveries=advisory.get("deliveries", 0),
            reason=advisory.get("reason")
            or f"not acknowledged after {advisory.get('deliveries')} deliveries",
            subject=subject, event_type=event_type,
        ))
    return out


async def _original(bus: Bus, stream: str, seq: int) -> tuple[str | None, str | None]:
    try:
        msg = await bus.js.get_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        return None, None
    try:
        return msg.subject, decode(msg.data or b"").type
    except DecodeError:
        return msg.subject, None
