"""The dialogue actor: a user's text becomes a streamed LLM answer.

`user.text` → `turn.started`, `assistant.delta` (live, per token) and
`assistant.message` (final, in the log). The session's history comes from its
own event log, so the actor keeps no state between events.
"""

from __future__ import annotations

import time
from typing import ClassVar

import openai

from actors.base import Actor, Context
from actors.llm import LLMConfig
from bus.log import Entry
from schemas import AssistantDelta, AssistantMessage, Error, Event, TurnStarted, Usage, UserText


def chat_messages(system_prompt: str, history: list[Entry]) -> list[dict[str, str]]:
    """The system prompt (byte-identical every turn, for the server's prompt cache) + the log."""
    messages = [{"role": "system", "content": system_prompt}]
    for entry in history:
        event = entry.event
        if isinstance(event, UserText):
            messages.append({"role": "user", "content": event.text})
        elif isinstance(event, AssistantMessage) and event.text:
            messages.append({"role": "assistant", "content": event.text})
    return messages


class Dialogue(Actor):
    name: ClassVar[str] = "dialogue"
    consumes: ClassVar[tuple[str, ...]] = ("user.text",)
    emits: ClassVar[frozenset[str]] = frozenset({"turn.started", "assistant.message", "error"})

    async def setup(self) -> None:
        self.config = LLMConfig.from_env()
        self.client = self.config.client()

    async def teardown(self) -> None:
        await self.client.close()

    async def handle(self, event: Event, ctx: Context) -> None:
        assert isinstance(event, UserText)
        sid, turn_id = event.session_id, event.id  # a turn is named after its input
        started = time.perf_counter()
        await ctx.emit(TurnStarted(session_id=sid, turn_id=turn_id, input_id=event.id))
        messages = chat_messages(self.config.system_prompt, await ctx.history())
        parts: list[str] = []
        usage = Usage()
        ttft_ms: float | None = None
        model = self.config.model
        try:
            stream = await self.client.chat.completions.create(
                model=self.config.model, messages=messages, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage:
                    usage = Usage(prompt_tokens=chunk.usage.prompt_tokens,
                                  completion_tokens=chunk.usage.completion_tokens)
                if not chunk.choices or not chunk.choices[0].delta.content:
                    continue
                if ttft_ms is None:
                    ttft_ms = (time.perf_counter() - started) * 1000
                text = chunk.choices[0].delta.content
                await ctx.live(AssistantDelta(session_id=sid, turn_id=turn_id, text=text,
                                              index=len(parts)))
                parts.append(text)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError) as exc:
            await ctx.emit(Error(
                session_id=sid, turn_id=turn_id, code="llm_unavailable", retryable=True,
                source=self.name, message=f"LLM at {self.config.base_url} failed: {_describe(exc)}",
            ))
            return
        await ctx.emit(AssistantMessage(
            session_id=sid, turn_id=turn_id, text="".join(parts), model=model,
            provider=self.config.provider, usage=usage, ttft_ms=ttft_ms,
            total_ms=(time.perf_counter() - started) * 1000,
        ))


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    return str(exc) or type(exc).__name__
