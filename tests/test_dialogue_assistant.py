"""The dialogue reads the session's assistant from its read model: persona, greeting,
preferred LLM provider and enabled tools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from actors.runtime import ActorHost
from bus.client import Bus
from devservers.echo_llm import OpenAIServer
from projections.runtime import ProjectionService
from schemas import AssistantCreated, AssistantUpdated, SessionStarted, UserText, new_id
from settings.config import parse
from tests.conftest import wait_for
from tests.test_dialogue import finals, providers_toml, servers, start

__all__ = ["servers", "start"]  # fixtures


@pytest.fixture
async def projections(bus: Bus, data_dir: Path) -> AsyncIterator[ProjectionService]:
    service = ProjectionService(bus, data_dir)
    await service.start()
    yield service
    await service.stop()


async def test_a_session_talks_to_its_assistant(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, b = servers
    config = parse(providers_toml(a, b))
    aid = new_id()
    await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", name="Zed", persona="You are Zed.",
                                       greeting="Hi, I am Zed.", llm="p1", tools=["get_time"]))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=aid))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    greeting = finals(events)[0]
    assert greeting.text == "Hi, I am Zed." and greeting.turn_id == events[0].id
    assert [e.type for e in events] == ["session.started", "assistant.sentence", "assistant.message"]

    await bus.publish(UserText(session_id=s, text="who are you"))
    events = await wait_for(bus, s, lambda ev: len(finals(ev)) == 2)
    assert finals(events)[1].provider == "p1"  # the assistant's choice, not the chain's first
    assert not a.requests
    request = b.requests[-1]
    assert request["messages"][0] == {"role": "system", "content": "You are Zed."}
    assert request["messages"][1] == {"role": "assistant", "content": "Hi, I am Zed."}
    assert [t["function"]["name"] for t in request.get("tools", [])] == ["get_time"]


async def test_an_unknown_assistant_falls_back_to_the_configuration(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, _ = servers
    config = parse(providers_toml(a) + '[dialogue]\nsystem_prompt = "Configured."\n')
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id="nobody" + new_id()))
    await bus.publish(UserText(session_id=s, text="hello"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    assert [m.text for m in finals(events)] == ["You said: hello."]  # no greeting
    assert a.requests[-1]["messages"][0] == {"role": "system", "content": "Configured."}


async def test_a_persona_edit_applies_to_later_turns(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer],
        monkeypatch: pytest.MonkeyPatch, start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    monkeypatch.setattr("actors.assistant.CACHE_SECONDS", 0.0)
    aid = new_id()
    await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", persona="First."))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=aid))
    await bus.publish(UserText(session_id=s, text="one"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 1)
    await bus.publish(AssistantUpdated(assistant_id=aid, persona="Second."))
    await projections.caught_up()
    await bus.publish(UserText(session_id=s, text="two"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 2)
    assert [r["messages"][0]["content"] for r in a.requests] == ["First.", "Second."]
