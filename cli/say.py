"""`vagent say`: send a user's text into a session and print the answer as it streams."""

from __future__ import annotations

import asyncio
import sys

from bus.client import Bus, Message
from bus.errors import ConflictError
from bus.log import last_sequence
from bus.streams import STREAM_BY_AGGREGATE
from bus.subjects import aggregate_events
from schemas import AssistantDelta, AssistantMessage, DecodeError, Error, SessionStarted, UserText, decode


class SayError(Exception):
    pass


async def start_session_if_new(bus: Bus, session_id: str, transport: str) -> None:
    """Record `session.started` once: a conditional append on an empty session."""
    subject = aggregate_events("session", session_id)
    if await last_sequence(bus, STREAM_BY_AGGREGATE["session"], subject):
        return
    try:
        await bus.append(SessionStarted(session_id=session_id, transport=transport), 0)
    except ConflictError:
        pass  # someone else started it in the meantime


async def say(bus: Bus, session_id: str, text: str, *, timeout: float = 120.0) -> AssistantMessage:
    """Publish `user.text`, stream deltas to stdout, return the turn's final message."""
    await start_session_if_new(bus, session_id, "cli")
    user_text = UserText(session_id=session_id, text=text, source="cli")
    done: asyncio.Future[AssistantMessage] = asyncio.get_running_loop().create_future()
    streamed = False

    async def on_message(msg: Message) -> None:
        nonlocal streamed
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        if event.turn_id != user_text.id or done.done():  # type: ignore[attr-defined]
            return
        if isinstance(event, AssistantDelta):
            streamed = True
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, AssistantMessage):
            done.set_result(event)
        elif isinstance(event, Error):
            done.set_exception(SayError(f"{event.code}: {event.message}"))

    # Deltas are live-only; the final message is read as JetStream stores it.
    sub = await bus.subscribe(f"vagent.session.{session_id}.>", on_message)
    try:
        await bus.publish(user_text)
        try:
            message = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise SayError(f"no answer in {timeout:.0f}s: is `vagent up` running? "
                           "(`vagent health` tells)") from None
    finally:
        await sub.stop()
    if not streamed:
        sys.stdout.write(message.text)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return message
