"""`vagent tail`: print the events on a subject as they flow, optionally from the log's start."""

from __future__ import annotations

import asyncio
import sys

from bus.admin import last_seq
from bus.client import Bus, Message
from bus.errors import BusError
from bus.log import read
from bus.streams import stored_part
from cli.display import message_line
from schemas import DecodeError, decode


def _is_audio(subject: str) -> bool:
    return subject.endswith((".audio.in", ".audio.out"))


async def tail(bus: Bus, subject: str, *, as_json: bool, from_start: bool,
               limit: int | None = None, audio: bool = False) -> None:
    """Print decoded events; audio frames (dozens a second) only with `audio`."""
    printed = 0
    seen: set[str] = set()
    live: asyncio.Queue[Message] = asyncio.Queue()

    def emit(line: str) -> bool:
        nonlocal printed
        print(line, flush=True)
        printed += 1
        return limit is not None and printed >= limit

    async def collect(msg: Message) -> None:
        if audio or not _is_audio(msg.subject):
            live.put_nowait(msg)

    # Subscribe before reading history, so nothing falls between the two; ids dedupe the overlap.
    sub = await bus.subscribe(subject, collect)
    await bus.flush()  # the server has the subscription: nothing published from now on is missed
    print(f"following {subject}", file=sys.stderr, flush=True)
    try:
        if from_start:
            stored = stored_part(subject)
            if stored is None:
                raise BusError(f"no stream stores {subject!r}: --from-start needs a log subject")
            stream, stored_filter = stored
            last = await last_seq(bus, stream)
            if last:
                async for entry in read(bus, stream, stored_filter, until_seq=last, idle_timeout=2):
                    if entry.event is not None:
                        seen.add(entry.event.id)
                    if emit(message_line(entry.subject, entry.data, as_json)):
                        return
        while True:
            msg = await live.get()
            if seen:
                try:
                    if decode(msg.data).id in seen:
                        continue
                except DecodeError:
                    pass
            if emit(message_line(msg.subject, msg.data, as_json)):
                return
    finally:
        await sub.stop()
        sys.stdout.flush()
