"""An actor killed (SIGKILL) in the middle of a turn: after restart the input is
redelivered and its effect is stored exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from bus.client import Bus, Message
from bus.log import load
from bus.server import EmbeddedServer
from devservers.echo_llm import OpenAIServer
from schemas import AssistantDelta, UserText, decode
from tests.procs import Proc


@pytest.fixture(scope="module")
def nats(module_nats: EmbeddedServer) -> EmbeddedServer:
    return module_nats


@pytest.fixture
def slow_llm() -> Iterator[OpenAIServer]:
    server = OpenAIServer(token_delay=0.4).start()
    yield server
    server.stop()


@pytest.fixture
async def crash_bus(nats: EmbeddedServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats.url)
    await bus.declare()
    yield bus
    await bus.close()


@pytest.mark.slow
async def test_killed_actor_mid_turn_redelivers_and_stores_the_answer_once(
        crash_bus: Bus, nats: EmbeddedServer, slow_llm: OpenAIServer) -> None:
    bus = crash_bus
    environment = {"OPENAI_BASE_URL": slow_llm.base_url, "VAGENT_ACK_WAIT": "2"}
    actor = Proc(["actor", "run", "dialogue", "--nats", nats.url], **environment)
    actor.wait_for("running")
    deltas: asyncio.Queue[AssistantDelta] = asyncio.Queue()

    async def on_delta(msg: Message) -> None:
        deltas.put_nowait(decode(msg.data))  # type: ignore[arg-type]

    sub = await bus.subscribe("vagent.session.crash1.live.assistant.delta", on_delta)
    question = UserText(session_id="crash1", text="tell me a long story")
    await bus.publish(question)
    await asyncio.wait_for(deltas.get(), 15)  # the answer is streaming: the actor is mid-turn
    actor.kill()
    entries, _ = await load(bus, "session", "crash1")
    assert [e.event.type for e in entries] == ["user.text", "turn.started"]  # type: ignore[union-attr]

    restarted = Proc(["actor", "run", "dialogue", "--nats", nats.url], **environment)
    try:
        restarted.wait_for("running")
        restarted.wait_for("handled", timeout=30)
    finally:
        await sub.stop()
        assert restarted.stop() == 0
    entries, _ = await load(bus, "session", "crash1")
    types = [e.event.type for e in entries]  # type: ignore[union-attr]
    # The re-emitted turn.started had the same derived id: JetStream kept one.
    assert types == ["user.text", "turn.started", "assistant.sentence", "assistant.message"]
    assert entries[3].event.text == "You said: tell me a long story."  # type: ignore[union-attr]
    assert entries[3].event.causation_id == question.id  # type: ignore[union-attr]
    assert "delivered=2" in restarted.output()
    assert len(slow_llm.requests) == 2  # asked once by each process
    info = await bus.js.consumer_info("SESSIONS", "dialogue")
    assert info.num_ack_pending == 0 and info.num_pending == 0
