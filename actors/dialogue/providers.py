"""LLM providers: an ordered chain of OpenAI-compatible servers with circuit breakers.

A provider that errors, times out before its first token, or whose breaker is
open is skipped and the next one answers; the turn's events name the provider
that did. Once tokens have flowed, a failure ends the turn with what was said:
switching providers mid-sentence would make the assistant say things twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from settings.config import BreakerConfig, ProviderConfig, secret

Clock = Callable[[], float]


class CircuitBreaker:
    """closed → (N failures within the window) → open → (cooldown) → half-open: one probe.
    The probe's success closes the breaker; its failure opens it again."""

    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.failures: list[float] = []
        self.opened_at: float | None = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.probing or self.clock() - self.opened_at >= self.config.cooldown:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True  # exactly one request tests the provider
            return True
        return False

    def success(self) -> None:
        self.failures.clear()
        self.opened_at = None
        self.probing = False

    def failure(self) -> None:
        now = self.clock()
        if self.opened_at is not None:  # the probe failed: stay open for another cooldown
            self.opened_at = now
            self.probing = False
            return
        self.failures = [t for t in self.failures if now - t < self.config.window] + [now]
        if len(self.failures) >= self.config.failures:
            self.opened_at = now


@dataclass
class Provider:
    config: ProviderConfig
    breaker: CircuitBreaker
    client: AsyncOpenAI = field(init=False)

    def __post_init__(self) -> None:
        # Local servers ignore the key, but the SDK insists on one.
        self.client = AsyncOpenAI(base_url=self.config.base_url,
                                  api_key=secret(self.config.api_key_env) or "no-key",
                                  timeout=self.config.timeout, max_retries=0)

    @property
    def name(self) -> str:
        return self.config.name


class ProviderFailed(Exception):
    """Every provider failed (or was skipped) before answering."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons) or "no LLM provider configured")
        self.reasons = reasons


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
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no first token in time"
    return str(exc) or type(exc).__name__


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
        self.providers = [Provider(c, CircuitBreaker(breaker, clock)) for c in configs]

    async def open(self, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None = None, prefer: str | None = None) -> Answer:
        """The first provider that starts streaming (`prefer`, an assistant's choice, is tried
        first; the rest of the chain stays its fallback); raises ProviderFailed if none does."""
        reasons = []
        for provider in sorted(self.providers, key=lambda p: p.name != prefer):
            if not provider.breaker.allow():
                reasons.append(f"{provider.name}: circuit open")
                continue
            try:
                started, asked, tools_now = None, messages, tools
                if provider.config.tool_probe and messages[-1]["role"] == "tool":
                    # Small models answer from tool results well only when they are stated in
                    # the system prompt; offered tools again, they keep calling them.
                    asked, tools_now = results_in_system_prompt(messages), None
                elif tools and provider.config.tool_probe and messages[-1]["role"] == "user":
                    started = await self._probe(provider, messages, tools)
                    tools_now = None  # the probe decided: no tool this time
                if started is None:
                    started = await self._start(provider, asked, tools_now)
            except (*_FAILURES, StopAsyncIteration) as exc:
                provider.breaker.failure()
                reasons.append(f"{provider.name} ({provider.config.base_url}): {describe(exc)}")
                continue
            return Answer(provider, self._rest(provider, *started), started[1])
        raise ProviderFailed(reasons)

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
