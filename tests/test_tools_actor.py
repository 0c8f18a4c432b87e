"""The tools actor on a real bus: `tool.call` in the log → `tool.result` in the log,
whatever the tool does, and its catalog in KV for the dialogue."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from actors.runtime import ActorHost
from actors.tools import ToolSpec, builtin
from actors.tools.actor import Tools
from actors.tools.builtin import BuiltinContext, FunctionTool
from actors.tools.catalog import catalog
from bus.client import Bus
from bus.log import load
from bus.server import EmbeddedServer, free_port
from schemas import ToolCall, ToolResult, new_id
from settings.config import Config, parse
from tests.mcp_server import HttpMcpServer

# --- tools that misbehave, offered as builtins through the registry ------------------


async def _explode() -> str:
    raise RuntimeError("kaboom")


async def _stall() -> str:
    await asyncio.sleep(3600)
    return "never"


def explode(ctx: BuiltinContext) -> FunctionTool:
    return FunctionTool(ToolSpec(name="explode", description="raises"), _explode)


def stall(ctx: BuiltinContext) -> FunctionTool:
    return FunctionTool(ToolSpec(name="stall", description="hangs"), _stall)


def flood(ctx: BuiltinContext) -> FunctionTool:
    return FunctionTool(ToolSpec(name="flood", description="1 MB"), lambda: "x" * (1 << 20))


TEST_BUILTINS = {name: f"tests.test_tools_actor:{name}" for name in ("explode", "stall", "flood")}

CONFIG = f"""
[tools]
builtins = ["get_time", "calculator", "explode", "stall", "flood"]
timeout = 1.0
max_result_chars = 500

[[tools.mcp]]
name = "test"
command = {json.dumps([sys.executable, "-m", "tests.mcp_server"])}
timeout = 20.0
"""


@pytest.fixture(scope="module")
async def mbus(module_nats: EmbeddedServer) -> AsyncIterator[Bus]:
    # A server of this module's own: a new durable sees every earlier tool.call in the stream.
    b = await Bus.connect(module_nats.url, name="test-tools")
    await b.declare()
    yield b
    await b.close()


@pytest.fixture(scope="module")
def tools_config() -> Iterator[Config]:
    """CONFIG, with this module's builtins registered while it runs."""
    with pytest.MonkeyPatch.context() as mp:
        for name, target in TEST_BUILTINS.items():
            mp.setitem(builtin.BUILTINS, name, target)
        yield parse(CONFIG)


@pytest.fixture(scope="module")
async def host(mbus: Bus, tools_config: Config) -> AsyncIterator[ActorHost]:
    with pytest.MonkeyPatch.context() as mp:
        # A durable of its own, so no other test's tools actor shares these messages.
        mp.setattr(Tools, "name", "tools_" + new_id())
        h = ActorHost(mbus, ["tools"], tools_config)
        await h.start()
        yield h
        await h.stop()


async def call(bus: Bus, name: str, arguments: str = "{}", session: str | None = None) -> ToolCall:
    event = ToolCall(session_id=session or "t" + new_id(), turn_id="turn" + new_id(),
                     call_id="call_" + new_id(), name=name, arguments=arguments)
    await bus.publish(event)
    return event


async def result_of(bus: Bus, event: ToolCall, timeout: float = 15.0) -> ToolResult:
    async with asyncio.timeout(timeout):
        while True:
            entries, _ = await load(bus, "session", event.session_id)
            for entry in entries:
                if isinstance(entry.event, ToolResult) and entry.event.call_id == event.call_id:
                    return entry.event
            await asyncio.sleep(0.05)


async def test_catalog_is_published_for_the_dialogue(mbus: Bus, host: ActorHost) -> None:
    specs = {s.name: s for s in await catalog(mbus)}
    assert {"get_time", "calculator", "explode", "add", "echo", "noop_2"} <= set(specs)
    assert specs["calculator"].source == "builtin" and specs["add"].source == "mcp:test"
    assert specs["add"].parameters["required"] == ["a", "b"]
    assert list(specs) == sorted(specs)


async def test_a_call_gets_its_result(mbus: Bus, host: ActorHost) -> None:
    event = await call(mbus, "calculator", '{"expression": "2 * 21"}')
    result = await result_of(mbus, event)
    assert (result.content, result.is_error) == ("2 * 21 = 42", False)
    assert (result.call_id, result.name, result.turn_id) == (event.call_id, "calculator", event.turn_id)
    assert result.causation_id == event.id and result.session_id == event.session_id


async def test_mcp_tool_through_the_bus(mbus: Bus, host: ActorHost) -> None:
    result = await result_of(mbus, await call(mbus, "add", '{"a": 2, "b": 3}'))
    assert (result.content, result.is_error) == ("5", False)
    failed = await result_of(mbus, await call(mbus, "fail"))
    assert (failed.content, failed.is_error) == ("the tool failed on purpose", True)


async def test_misbehaving_tools_still_answer(mbus: Bus, host: ActorHost) -> None:
    session = "t" + new_id()
    raised = await result_of(mbus, await call(mbus, "explode", session=session))
    assert raised.is_error and raised.content == "explode failed: RuntimeError: kaboom"
    started = time.perf_counter()
    hung = await result_of(mbus, await call(mbus, "stall", session=session))
    assert hung.is_error and hung.content == "stall did not finish within 1 s"
    assert time.perf_counter() - started < 5
    big = await result_of(mbus, await call(mbus, "flood", session=session))
    assert not big.is_error and len(big.content) <= 500
    assert big.content.startswith("xxx") and big.content.endswith(
        "[result cut: 1048576 characters, only the first part shown]")
    unknown = await result_of(mbus, await call(mbus, "teleport", session=session))
    assert unknown.is_error and unknown.content.startswith("unknown tool 'teleport'; available:")
    bad = await result_of(mbus, await call(mbus, "calculator", '{"expression": ', session=session))
    assert bad.is_error and "the arguments are not valid JSON" in bad.content
    # One result per call, each caused by its call.
    entries, _ = await load(mbus, "session", session)
    results = [e.event for e in entries if isinstance(e.event, ToolResult)]
    assert len(results) == 5


async def test_calls_of_one_step_run_side_by_side(mbus: Bus, host: ActorHost) -> None:
    session = "t" + new_id()
    slow = await call(mbus, "stall", session=session)
    quick = await call(mbus, "calculator", '{"expression": "1 + 1"}', session=session)
    assert (await result_of(mbus, slow)).is_error
    entries, _ = await load(mbus, "session", session)
    answered = [e.event.call_id for e in entries if isinstance(e.event, ToolResult)]
    assert answered == [quick.call_id, slow.call_id]  # the quick call did not wait for the stall


async def test_old_calls_are_not_run_and_answered_ones_not_answered_again(
        mbus: Bus, host: ActorHost) -> None:
    session = "t" + new_id()
    long_ago = time.time_ns() - 600 * 10**9
    answered = ToolCall(session_id=session, call_id="c1", name="explode", ts=long_ago)
    await mbus.publish(ToolResult(session_id=session, call_id="c1", name="explode", content="done",
                                  causation_id=answered.id))
    await mbus.publish(answered)
    stale = ToolCall(session_id=session, call_id="c2", name="explode", ts=long_ago)
    await mbus.publish(stale)
    result = await result_of(mbus, stale)
    assert result.is_error and re.fullmatch(r"explode was not run: the call is 60\d s old", result.content)
    await result_of(mbus, await call(mbus, "get_time", session=session))  # after both, in order
    entries, _ = await load(mbus, "session", session)
    assert [e.event.content for e in entries if isinstance(e.event, ToolResult)  # type: ignore[union-attr]
            ][:2] == ["done", result.content]


async def test_catalog_is_withdrawn_on_teardown(mbus: Bus, tools_config: Config) -> None:
    # Set up and torn down without a consumer: it must not take the module host's calls.
    name = "probe_" + new_id()
    actor = Tools(mbus, parse(f'[tools]\nbuiltins = []\n[[tools.webhooks]]\nname = "{name}"\n'
                              'description = "d"\nurl = "http://127.0.0.1:9/"\n'))
    await actor.setup()
    try:
        assert name in {s.name for s in await catalog(mbus)}
    finally:
        await actor.teardown()
    assert name not in {s.name for s in await catalog(mbus)}


async def test_an_mcp_server_down_at_start_joins_when_it_answers(
        bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr("actors.tools.actor.REFRESH", 0.2)
    # Not mbus: there the module host has its own `add` in the catalog.
    actor = Tools(bus, parse(f'[tools]\nbuiltins = []\n[[tools.mcp]]\nname = "late"\n'
                             f'url = "http://127.0.0.1:{port}/mcp"\ntimeout = 5.0\n'))
    await actor.setup()
    server = None
    try:
        assert actor.toolset is not None and actor.toolset.tools == {}
        server = HttpMcpServer(port).start()
        async with asyncio.timeout(15):
            while "add" not in {s.name for s in await catalog(bus) if s.source == "mcp:late"}:
                await asyncio.sleep(0.1)
        assert (await actor.toolset.run("add", '{"a": 40, "b": 2}')).content == "42"
    finally:
        await actor.teardown()
        if server:
            server.stop()
