"""`vagent chat`: an interactive terminal conversation over the bus.

In a terminal the input line is prompt_toolkit's: the answer streams above it (its unfinished
line shown just above the prompt, each finished line printed for good), so what the user types
meanwhile stays on a line of its own. A line entered while an answer streams waits its turn.
Without a terminal (piped stdin or stdout) lines are read from stdin and the conversation is
printed as a transcript."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Protocol

from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

from bus.client import Bus
from cli.say import ASSISTANT, SYSTEM, YOU, Opening, SayError, print_tools, say
from hosting.logs import console
from schemas import new_id

HELP = "Type a message. /new starts a new session, /quit leaves."


async def chat(bus: Bus, session_id: str | None, timeout: float, interactive: bool | None = None,
               opening: Opening = SYSTEM) -> None:
    """`interactive` None: when both stdin and stdout are terminals. New sessions (also
    after /new) start with `opening`."""
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    session = session_id or f"chat-{new_id()}"
    console.line(f"session {session}. {HELP}")
    async with (_prompted() if interactive else _piped()) as lines:
        while (line := await lines.next()) is not None:
            text = line.strip()
            if not text:
                continue
            console.line(YOU + text)
            if text in ("/quit", "/exit"):
                return
            if text == "/new":
                session = f"chat-{new_id()}"
                console.line(f"new session {session}")
                continue
            try:
                await say(bus, session, text, timeout=timeout, on_tool=print_tools, transport="chat",
                          prefix=ASSISTANT, opening=opening)
            except SayError as exc:
                console.line(f"(error: {exc})")


class _Lines(Protocol):
    async def next(self) -> str | None:
        """The user's next line; None once input ended."""
        ...


class _Piped:
    """stdin's lines, each read when wanted (a read left waiting would hold the exit)."""

    async def next(self) -> str | None:
        return await asyncio.to_thread(sys.stdin.readline) or None


@contextlib.asynccontextmanager
async def _piped() -> AsyncIterator[_Lines]:
    yield _Piped()


class _Prompt:
    """prompt_toolkit's line editor, asking again as soon as a line is entered. Above the
    input: the answer's unfinished line, then the lines entered but not yet sent."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.waiting: list[str] = []
        self.session: PromptSession[str] = PromptSession(self.message, erase_when_done=True)

    def message(self) -> str:
        above = [console.partial] if console.partial else []
        return "\n".join([*above, *(YOU + w for w in self.waiting), YOU])

    async def read(self) -> None:
        while True:
            try:
                line = await self.session.prompt_async()
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C
                await self.queue.put(None)
                return
            if line.strip():
                self.waiting.append(line.strip())
                await self.queue.put(line)

    async def next(self) -> str | None:
        line = await self.queue.get()
        if line is not None:
            self.waiting.remove(line.strip())
        return line


@contextlib.asynccontextmanager
async def _prompted() -> AsyncIterator[_Lines]:
    prompt = _Prompt()
    # patch_stdout prints above the prompt what goes to stdout or stderr (answers, logs);
    # raw keeps the dimmed tool lines' colour.
    with patch_stdout(raw=True):
        console.hold(prompt.session.app.invalidate)
        reading = asyncio.create_task(prompt.read())
        try:
            yield prompt
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            console.hold(None)
