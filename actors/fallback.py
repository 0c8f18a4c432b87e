"""Ordered chains of providers with circuit breakers: the one way an LLM, ASR or TTS
provider that fails is skipped for the next one.

Each provider has its own breaker; `first_answer` tries them in order (an assistant's
choice first), skips those whose breaker is open, and counts a failure against the one
that failed. Whoever streams on after the first answer reports the stream's own success
or failure to the breaker (`CircuitBreaker.success` / `failure`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import openai
from openai import AsyncOpenAI

from settings.config import BreakerConfig, secret

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

    def abandon(self) -> None:
        """The request ended with no verdict (cancelled: an interrupted turn): if it was the
        probe, the next request may probe instead."""
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


class Member(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def where(self) -> str:
        """How a failure names it: its name and address."""
        ...


class ServerConfig(Protocol):
    """What every `[[…providers]]` entry has: an OpenAI-compatible server."""

    @property
    def name(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    @property
    def api_key_env(self) -> str | None: ...

    @property
    def timeout(self) -> float: ...


C = TypeVar("C", bound=ServerConfig)


@dataclass
class OpenAIProvider(Generic[C]):
    """One provider of a chain: its settings, its breaker, and the `openai` SDK's client."""

    config: C
    breaker: CircuitBreaker
    client: AsyncOpenAI = field(init=False)

    def __post_init__(self) -> None:
        # Local servers ignore the key, but the SDK insists on one. No SDK retries: the
        # chain's next provider is the retry, and the breaker counts every failure.
        self.client = AsyncOpenAI(base_url=self.config.base_url,
                                  api_key=secret(self.config.api_key_env) or "no-key",
                                  timeout=self.config.timeout, max_retries=0)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def where(self) -> str:
        return f"{self.name} ({self.config.base_url})"


def chain_of(configs: Sequence[C], breaker: BreakerConfig,
            clock: Clock = time.monotonic) -> list[OpenAIProvider[C]]:
    return [OpenAIProvider(c, CircuitBreaker(breaker, clock)) for c in configs]


class ProviderFailed(Exception):
    """Every provider of a chain failed (or was skipped) before answering."""

    def __init__(self, reasons: list[str], kind: str = "LLM") -> None:
        super().__init__("; ".join(reasons) or f"no {kind} provider configured")
        self.reasons = reasons


def failure_text(exc: BaseException, timed_out: str) -> str:
    """Why a provider failed, in a few words: its HTTP status and message, `timed_out` when
    it took too long, else the exception's own text."""
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return timed_out
    return str(exc) or type(exc).__name__


M = TypeVar("M", bound=Member)
T = TypeVar("T")


async def first_answer(members: Sequence[M], attempt: Callable[[M], Awaitable[T]], *,
                       failures: tuple[type[BaseException], ...],
                       describe: Callable[[BaseException], str],
                       prefer: str | None = None, kind: str = "LLM") -> tuple[M, T]:
    """The first member (`prefer` first, the others in order) whose `attempt` returns, and
    what it returned; raises ProviderFailed with every member's reason if none does. An
    exception outside `failures` is no provider's fault and goes to the caller."""
    reasons = []
    for member in sorted(members, key=lambda m: m.name != prefer):
        if not member.breaker.allow():
            reasons.append(f"{member.name}: circuit open")
            continue
        try:
            return member, await attempt(member)
        except failures as exc:
            member.breaker.failure()
            reasons.append(f"{member.where}: {describe(exc)}")
        except BaseException:
            member.breaker.abandon()
            raise
    raise ProviderFailed(reasons, kind)
