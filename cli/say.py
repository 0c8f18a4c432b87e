"""`vagent say` and `vagent chat`: a user's text into a session, the answer streamed back."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from bus.client import Bus, Message
from bus.errors import ConflictError
from bus.log import last_sequence
from bus.streams import STREAM_BY_AGGREGATE
from bus.subjects import aggregate_events, session_all
from hosting.logs import console
from schemas import (
    AssistantDelta,
    AssistantMessage,
    DecodeError,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    ToolCall,
    ToolResult,
    UserText,
    decode,
)


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


def _dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stdout.isatty() else text


def print_tools(event: Event) -> None:
    """Tool activity, shown dimmed on lines of its own between the streamed words."""
    if isinstance(event, ToolCall):
        console.line(_dim(f"[tool {event.name}({event.arguments})]"))
    elif isinstance(event, ToolResult):
        mark = "error" if event.is_error else "result"
        console.line(_dim(f"[{mark} {event.name}: {event.content[:200]}]"))


async def say(bus: Bus, session_id: str, text: str, *, timeout: float = 120.0,
              on_tool: Callable[[Event], None] | None = None,
              transport: str = "cli", prefix: str = "") -> AssistantMessage:
    """Publish `user.text`, stream the answer to stdout (through the console, so that log
    lines stay off its line) after `prefix`, return the turn's final message (the first
    `assistant.message` of the turn without tool calls)."""
    await start_session_if_new(bus, session_id, transport)
    user_text = UserText(session_id=session_id, text=text, source="cli")
    done: asyncio.Future[AssistantMessage] = asyncio.get_running_loop().create_future()
    streamed = False

    async def on_message(msg: Message) -> None:
        nonlocal streamed
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        if getattr(event, "turn_id", None) != user_text.id or done.done():
            return
        if isinstance(event, AssistantDelta):
            console.write(event.text if streamed else prefix + event.text)
            streamed = True
        elif isinstance(event, ToolCall | ToolResult) and on_tool:
            on_tool(event)
        elif isinstance(event, AssistantMessage) and not event.tool_calls:
            done.set_result(event)
        elif isinstance(event, Error):
            done.set_exception(SayError(f"{event.code}: {event.message}"))
        elif isinstance(event, SessionEnded) and not done.done():
            pass  # the goodbye message arrives before it

    # Deltas are live-only; the other events are read as JetStream stores them.
    sub = await bus.subscribe(session_all(session_id), on_message)
    try:
        await bus.flush()
        await bus.publish(user_text)
        try:
            message = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            raise SayError(f"no answer in {timeout:.0f}s: is `vagent up` running? "
                           "(`vagent health` tells)") from None
    finally:
        await sub.stop()
    if not streamed:
        console.write(prefix + message.text)
    console.end_line()
    return message
