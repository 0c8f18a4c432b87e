"""`vagent say` and `vagent chat`: a user's text into a session, the answer streamed back."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bus.client import Bus, Message
from bus.errors import ConflictError
from bus.log import last_sequence
from bus.streams import STREAM_BY_AGGREGATE
from bus.subjects import aggregate_events, session_all
from hosting.logs import console
from projections.client import QueryError, run_query
from schemas import (
    AssistantDelta,
    AssistantMessage,
    AudioParams,
    DecodeError,
    Error,
    Event,
    SessionStarted,
    ToolCall,
    ToolResult,
    UserText,
    decode,
)

YOU, ASSISTANT = "you> ", "assistant> "  # who said a line, where both sides are shown


class SayError(Exception):
    pass


@dataclass(frozen=True)
class Opening:
    """Whom a new session talks to: an assistant (by default the system's own) and the
    language its user speaks, a hint only the default assistant heeds (the others have a
    language of their own)."""

    assistant_id: str | None = None
    user_id: str | None = None  # the assistant's owner, so the session is listed as theirs
    language: str | None = None


SYSTEM = Opening()  # the system's assistant, no language named


async def opening(bus: Bus, assistant_id: str | None, language: str | None) -> Opening:
    """The opening of a new session with `assistant_id`, checked against the read model."""
    if assistant_id is None:
        return Opening(language=language)
    try:
        columns, rows = await run_query(bus, None, "assistant_settings",
                                        {"assistant_id": assistant_id})
    except QueryError as exc:
        raise SayError(f"cannot look up assistant {assistant_id}: {exc}") from None
    if not rows:
        raise SayError(f"no assistant {assistant_id} (`vagent assistants list` names them)")
    owner = dict(zip(columns, rows[0], strict=True)).get("owner_id")
    return Opening(assistant_id=assistant_id, user_id=owner, language=language)


async def start_session_if_new(bus: Bus, session_id: str, transport: str, *,
                               opening: Opening = SYSTEM,
                               audio_in: AudioParams | None = None,
                               audio_out: AudioParams | None = None) -> None:
    """Record `session.started` once: a conditional append on an empty session."""
    subject = aggregate_events("session", session_id)
    if await last_sequence(bus, STREAM_BY_AGGREGATE["session"], subject):
        return
    try:
        await bus.append(SessionStarted(
            session_id=session_id, transport=transport, user_id=opening.user_id,
            assistant_id=opening.assistant_id, language=opening.language,
            audio_in=audio_in, audio_out=audio_out), 0)
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


class Answer:
    """One turn's answer as it streams: its words to stdout through the console (so that log
    lines stay off its line) after `prefix`, `done` set to the turn's final message (the
    first `assistant.message` of the turn without tool calls). Until `turn_id` is known,
    nothing is shown."""

    def __init__(self, prefix: str = "", on_tool: Callable[[Event], None] | None = None) -> None:
        self.turn_id: str | None = None
        self.prefix = prefix
        self.on_tool = on_tool
        self.streamed = False
        self.done: asyncio.Future[AssistantMessage] = asyncio.get_running_loop().create_future()

    def feed(self, event: Event) -> None:
        if self.turn_id is None or getattr(event, "turn_id", None) != self.turn_id or self.done.done():
            return
        if isinstance(event, AssistantDelta):
            console.write(event.text if self.streamed else self.prefix + event.text)
            self.streamed = True
        elif isinstance(event, ToolCall | ToolResult) and self.on_tool:
            self.on_tool(event)
        elif isinstance(event, AssistantMessage) and not event.tool_calls:
            self.done.set_result(event)
        elif isinstance(event, Error):
            self.done.set_exception(SayError(f"{event.code}: {event.message}"))

    async def wait(self, timeout: float) -> AssistantMessage:
        """The final message, its line ended (written whole when no words streamed)."""
        try:
            message = await asyncio.wait_for(asyncio.shield(self.done), timeout)
        except TimeoutError:
            raise SayError(f"no answer in {timeout:.0f}s: is `vagent up` running? "
                           "(`vagent health` tells)") from None
        if not self.streamed:
            console.write(self.prefix + message.text)
        console.end_line()
        return message


async def say(bus: Bus, session_id: str, text: str, *, timeout: float = 120.0,
              on_tool: Callable[[Event], None] | None = None,
              transport: str = "cli", prefix: str = "",
              opening: Opening = SYSTEM) -> AssistantMessage:
    """Publish `user.text`, stream the answer to stdout after `prefix`, return the turn's
    final message. A new session starts with `opening`."""
    await start_session_if_new(bus, session_id, transport, opening=opening)
    user_text = UserText(session_id=session_id, text=text, source="cli")
    answer = Answer(prefix, on_tool)
    answer.turn_id = user_text.id

    async def on_message(msg: Message) -> None:
        try:
            answer.feed(decode(msg.data))
        except DecodeError:
            return

    # Deltas are live-only; the other events are read as JetStream stores them.
    sub = await bus.subscribe(session_all(session_id), on_message)
    try:
        await bus.flush()
        await bus.publish(user_text)
        return await answer.wait(timeout)
    finally:
        await sub.stop()
