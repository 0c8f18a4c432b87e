"""LLM providers: an ordered chain of OpenAI-compatible servers with circuit breakers.

A provider that errors, times out before its first token, or whose breaker is
open is skipped and the next one answers; the turn's events name the provider
that did. Once tokens have flowed, a failure ends the turn with what was said:
switching providers mid-sentence would make the assistant say things twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from actors.config import BreakerConfig, ProviderConfig, secret

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
    """An open stream from the provider that answered."""

    provider: Provider
    chunks: AsyncIterator[ChatCompletionChunk]


_FAILURES = (openai.APIError, TimeoutError)


def describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no first token in time"
    return str(exc) or type(exc).__name__


class ProviderChain:
    def __init__(self, configs: list[ProviderConfig], breaker: BreakerConfig,
                 clock: Clock = time.monotonic) -> None:
        self.providers = [Provider(c, CircuitBreaker(breaker, clock)) for c in configs]

    async def open(self, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None = None) -> Answer:
        """The first provider that starts streaming; raises ProviderFailed if none does."""
        reasons = []
        for provider in self.providers:
            if not provider.breaker.allow():
                reasons.append(f"{provider.name}: circuit open")
                continue
            try:
                stream = await asyncio.wait_for(self._create(provider, messages, tools),
                                                provider.config.first_token_timeout)
                first = await asyncio.wait_for(anext(stream), provider.config.first_token_timeout)
            except (*_FAILURES, StopAsyncIteration) as exc:
                provider.breaker.failure()
                reasons.append(f"{provider.name} ({provider.config.base_url}): {describe(exc)}")
                continue
            return Answer(provider, self._rest(provider, first, stream))
        raise ProviderFailed(reasons)

    async def _create(self, provider: Provider, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None) -> AsyncIterator[ChatCompletionChunk]:
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        if provider.config.max_tokens:
            extra["max_tokens"] = provider.config.max_tokens
        stream = await provider.client.chat.completions.create(
            model=provider.config.model, messages=messages, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, **extra,
        )
        return stream.__aiter__()

    async def _rest(self, provider: Provider, first: ChatCompletionChunk,
                    stream: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
        yield first
        try:
            async for chunk in stream:
                yield chunk
        except _FAILURES:
            provider.breaker.failure()
            raise
        provider.breaker.success()

    async def close(self) -> None:
        for provider in self.providers:
            await provider.client.close()
