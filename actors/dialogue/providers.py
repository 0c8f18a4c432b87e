"""LLM providers: an ordered chain of OpenAI-compatible servers with circuit breakers.

A provider that errors, times out before its first token, or whose breaker is
open is skipped and the next one answers; the turn's events name the provider
that did. Once tokens have flowed, a failure ends the turn with what was said:
switching providers mid-sentence would make the assistant say things twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import msgspec
import openai
from openai import AsyncStream
from openai.types.chat import ChatCompletion

from actors.fallback import (
    CircuitBreaker,
    Clock,
    OpenAIProvider,
    ProviderFailed,
    chain_of,
    failure_text,
    first_answer,
)
from settings.config import BreakerConfig, ProviderConfig

__all__ = ["Answer", "CircuitBreaker", "ProviderChain", "ProviderFailed"]


Provider = OpenAIProvider[ProviderConfig]


# --- a streamed chunk: only what the dialogue reads -------------------------------------------
# Decoded with msgspec (~1.5 µs a chunk) instead of the SDK's pydantic model construction
# (~140 µs): paid on every token of every answer, that was the largest share of what a long
# answer costs the process, which every other session waits behind. The SDK builds any
# `cast_to` with a `build(response=, data=)` classmethod this way (its ModelBuilderProtocol).

class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class Choice(msgspec.Struct):
    delta: Delta = msgspec.field(default_factory=Delta)
    index: int = 0
    finish_reason: str | None = None


class ChunkUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatCompletionChunk(msgspec.Struct):
    model: str | None = None
    choices: list[Choice] | None = None
    usage: ChunkUsage | None = None

    @classmethod
    def build(cls, *, response: Any, data: object) -> ChatCompletionChunk:
        try:
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:  # a failing provider, as any other failure
            raise openai.APIResponseValidationError(response, data, message=str(exc)) from None


@dataclass
class Answer:
    """An open stream from the provider that answered; `close()` it once done with it."""

    provider: Provider
    chunks: AsyncGenerator[ChatCompletionChunk, None]
    stream: AsyncStream[ChatCompletionChunk]

    async def close(self) -> None:
        """End the HTTP request, read to its end or not (also before the first chunk was
        taken, when `chunks` never started and so cannot close it itself)."""
        await self.chunks.aclose()
        await self.stream.close()


_FAILURES = (openai.APIError, TimeoutError)


def may_be_tool_call(text: str) -> bool:
    """Whether text beginning like this may be a bare JSON tool call (small local models
    write them as content: `{"name": …}`, a list, a ```json fence or <tool_call>)."""
    return text.lstrip()[:1] in ("{", "[", "`", "<")


def describe(exc: BaseException) -> str:
    return failure_text(exc, "no first token in time")


def results_in_system_prompt(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to the last user message, with the tool results that followed it
    written into the system prompt instead of tool-call and tool messages."""
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    names = {c["id"]: c["function"]["name"] for m in messages[last_user:]
             for c in m.get("tool_calls") or []}
    results = [f"- {names.get(m.get('tool_call_id', ''), 'tool')}: {m['content']}"
               for m in messages[last_user:] if m["role"] == "tool"]
    system = (f"{messages[0]['content']}\n\nTool results for the user's last message:\n"
              + "\n".join(results) + "\nAnswer the user's last message with them, in plain words.")
    return [{"role": "system", "content": system}, *messages[1:last_user + 1]]


class ProviderChain:
    def __init__(self, configs: list[ProviderConfig], breaker: BreakerConfig,
                 clock: Clock = time.monotonic) -> None:
        self.providers = chain_of(configs, breaker, clock)

    async def open(self, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None = None, prefer: str | None = None) -> Answer:
        """The first provider that starts streaming (`prefer`, an assistant's choice, is tried
        first; the rest of the chain stays its fallback); raises ProviderFailed if none does."""
        async def attempt(provider: Provider) -> tuple[list[ChatCompletionChunk],
                                                       AsyncStream[ChatCompletionChunk]]:
            started, asked, tools_now = None, messages, tools
            if provider.config.tool_probe and messages[-1]["role"] == "tool":
                # Small models answer from tool results well only when they are stated in
                # the system prompt; offered tools again, they keep calling them.
                asked, tools_now = results_in_system_prompt(messages), None
            elif tools and provider.config.tool_probe and messages[-1]["role"] == "user":
                started = await self._probe(provider, messages, tools)
                tools_now = None  # the probe decided: no tool this time
            return started if started is not None else await self._start(provider, asked, tools_now)

        provider, started = await first_answer(
            self.providers, attempt, failures=(*_FAILURES, StopAsyncIteration),
            describe=describe, prefer=prefer)
        return Answer(provider, self._rest(provider, *started), started[1])

    async def _start(self, provider: Provider, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None
                     ) -> tuple[list[ChatCompletionChunk], AsyncStream[ChatCompletionChunk]]:
        timeout = provider.config.first_token_timeout
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation
        # of an interrupted turn, which would then go on answering.
        async with asyncio.timeout(timeout):
            stream = await self._create(provider, messages, tools)
        async with asyncio.timeout(timeout):
            return [await anext(stream)], stream

    async def _probe(self, provider: Provider, messages: list[dict[str, Any]],
                     tools: list[dict[str, Any]]
                     ) -> tuple[list[ChatCompletionChunk], AsyncStream[ChatCompletionChunk]] | None:
        """Small local models call tools reliably only when the question stands alone: ask
        with the system prompt and the question, and if the answer starts as a tool call it is
        the answer; otherwise stop it at its first words (a few tokens' cost) and let the
        caller ask again with the whole conversation and no tools."""
        head, stream = await self._start(provider, [messages[0], messages[-1]], tools)
        while True:
            delta = head[-1].choices[0].delta if head[-1].choices else None
            if delta is not None and delta.tool_calls:
                return head, stream
            text = "".join(c.choices[0].delta.content or "" for c in head if c.choices).lstrip()
            if text:
                if may_be_tool_call(text):
                    return head, stream
                await stream.close()
                return None
            try:
                async with asyncio.timeout(provider.config.first_token_timeout):
                    head.append(await anext(stream))
            except StopAsyncIteration:
                return None

    async def _create(self, provider: Provider, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None) -> AsyncStream[ChatCompletionChunk]:
        body: dict[str, Any] = {"model": provider.config.model, "messages": messages,
                                "stream": True, "stream_options": {"include_usage": True}}
        if tools:
            body["tools"] = tools
        if provider.config.max_tokens:
            body["max_tokens"] = provider.config.max_tokens
        # The SDK's `chat.completions.create` first walks every message through its typed
        # parameter transformer: 25 ms for a 177-message history, measured, on every turn.
        # These messages are plain JSON already, so they take the SDK's generic `post`
        # (what `create` ends in): the same client, auth, timeouts, errors and SSE parsing.
        for attempt in (1, 2):
            try:
                return await provider.client.post(
                    "/chat/completions", body=body, cast_to=ChatCompletion, stream=True,
                    stream_cls=AsyncStream[ChatCompletionChunk])
            except openai.APITimeoutError:
                raise
            except openai.APIConnectionError:
                # A pooled keep-alive connection the server closed as the request went out
                # ("server disconnected without sending a response"; llama.cpp's server does
                # this): nothing was answered, so one more try on a fresh connection is safe.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _rest(self, provider: Provider, head: list[ChatCompletionChunk],
                    stream: AsyncStream[ChatCompletionChunk]) -> AsyncGenerator[ChatCompletionChunk, None]:
        for chunk in head:
            yield chunk
        try:
            async for chunk in stream:
                yield chunk
        except _FAILURES:
            provider.breaker.failure()
            raise
        finally:
            await stream.close()
        provider.breaker.success()

    async def close(self) -> None:
        for provider in self.providers:
            await provider.client.close()
