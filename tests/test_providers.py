"""The provider chain with the real openai SDK against local chat-completions servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from actors.dialogue.providers import CircuitBreaker, ProviderChain, ProviderFailed
from bus.server import free_port
from devservers.echo_llm import OpenAIServer
from settings.config import BreakerConfig, ProviderConfig

MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_in_window_and_probes_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(failures=3, window=10, cooldown=5), clock)
    breaker.failure()
    clock.now += 11  # outside the window: forgotten
    breaker.failure()
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.failure()  # the probe failed: open for another cooldown
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


@pytest.fixture
def two() -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    a, b = OpenAIServer().start(), OpenAIServer().start()
    yield a, b
    a.stop()
    b.stop()


def chain(*servers: OpenAIServer | str, clock: Clock | None = None, **breaker: float) -> ProviderChain:
    configs = [ProviderConfig(name=f"p{i}", model="m", first_token_timeout=1.0,
                              base_url=s if isinstance(s, str) else s.base_url)
               for i, s in enumerate(servers)]
    return ProviderChain(configs, BreakerConfig(**breaker), clock or Clock())  # type: ignore[arg-type]


async def text_of(c: ProviderChain) -> tuple[str, str]:
    answer = await c.open(MESSAGES)
    parts = [ch.choices[0].delta.content or "" async for ch in answer.chunks if ch.choices]
    return answer.provider.name, "".join(parts)


@pytest.mark.parametrize("status", [429, 500])
async def test_an_erroring_provider_falls_back_to_the_next(two: tuple[OpenAIServer, OpenAIServer],
                                                          status: int) -> None:
    a, b = two
    a.fail_status = status
    c = chain(a, b)
    assert await text_of(c) == ("p1", "You said: hi.")
    assert len(a.requests) == 1 and len(b.requests) == 1  # no SDK retries hidden in between
    await c.close()


async def test_unreachable_and_slow_providers_fall_back(two: tuple[OpenAIServer, OpenAIServer]) -> None:
    a, b = two
    a.first_token_delay = 3.0  # past the 1 s first-token timeout
    c = chain(f"http://127.0.0.1:{free_port()}/v1", a, b)
    assert await text_of(c) == ("p2", "You said: hi.")
    await c.close()


async def test_breaker_skips_a_failing_provider_then_lets_a_probe_through(
        two: tuple[OpenAIServer, OpenAIServer]) -> None:
    a, b = two
    a.fail_status = 500
    clock = Clock()
    c = chain(a, b, clock=clock, failures=2, window=60, cooldown=30)
    for _ in range(2):
        assert (await text_of(c))[0] == "p1"
    assert len(a.requests) == 2
    assert (await text_of(c))[0] == "p1"
    assert len(a.requests) == 2  # open: not even asked
    a.fail_status = None
    clock.now += 30
    assert await text_of(c) == ("p0", "You said: hi.")  # the probe succeeds: closed again
    assert c.providers[0].breaker.state == "closed"
    await c.close()


async def test_all_failing_names_every_reason(two: tuple[OpenAIServer, OpenAIServer]) -> None:
    a, b = two
    a.fail_status, b.fail_status = 500, 429
    c = chain(a, b)
    with pytest.raises(ProviderFailed) as caught:
        await c.open(MESSAGES)
    assert "p0" in str(caught.value) and "HTTP 500" in str(caught.value)
    assert "p1" in str(caught.value) and "HTTP 429" in str(caught.value)
    await c.close()


async def test_the_request_carries_the_key_the_model_and_the_options(
        two: tuple[OpenAIServer, OpenAIServer], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = two
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-123")
    config = ProviderConfig(name="p", model="m-1", base_url=a.base_url, api_key_env="TEST_LLM_KEY",
                            max_tokens=64, first_token_timeout=1.0)
    c = ProviderChain([config], BreakerConfig(), Clock())
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    answer = await c.open(MESSAGES, tools)
    usage = [ch.usage async for ch in answer.chunks if ch.usage]
    assert a.authorizations == ["Bearer sk-test-123"]
    assert a.requests == [{"model": "m-1", "messages": MESSAGES, "stream": True,
                           "stream_options": {"include_usage": True}, "tools": tools,
                           "max_tokens": 64}]
    assert usage and usage[0].completion_tokens > 0  # the chunks are the SDK's typed models


async def test_a_connection_dropped_before_any_answer_is_asked_again(
        two: tuple[OpenAIServer, OpenAIServer]) -> None:
    """What a llama.cpp server does to a pooled keep-alive connection now and then: it reads the
    request and closes without answering. One fresh try reaches the same provider."""
    a, _ = two
    upstream_port = int(a.base_url.rsplit(":", 1)[1].split("/")[0])
    dropped = 0

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dropped
        if dropped == 0:
            dropped += 1
            await reader.read(65536)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    server = await asyncio.start_server(front, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        c = chain(f"http://127.0.0.1:{port}/v1")
        assert await text_of(c) == ("p0", "You said: hi.")
        assert dropped == 1 and len(a.requests) == 1
        await c.close()
    finally:
        server.close()
