"""`vagent chat`: an interactive terminal conversation over the bus."""

from __future__ import annotations

import asyncio
import sys

from bus.client import Bus
from cli.say import SayError, print_tools, say
from schemas import new_id

HELP = "Type a message. /new starts a new session, /quit leaves."


async def chat(bus: Bus, session_id: str | None, timeout: float) -> None:
    session = session_id or f"chat-{new_id()}"
    print(f"session {session}. {HELP}", flush=True)
    while True:
        try:
            line = await asyncio.to_thread(_read, "you> ")
        except EOFError:
            print()
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/new":
            session = f"chat-{new_id()}"
            print(f"new session {session}", flush=True)
            continue
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        try:
            await say(bus, session, text, timeout=timeout, on_tool=print_tools, transport="chat")
        except SayError as exc:
            print(f"\n(error: {exc})", flush=True)


def _read(prompt: str) -> str:
    return input(prompt)
