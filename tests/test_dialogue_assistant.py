"""The dialogue reads the session's assistant from its read model: persona, greeting,
preferred LLM provider, enabled tools and language."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from actors.runtime import ActorHost
from actors.tools.builtin import KnowledgeSearch, current_call
from bus.client import Bus
from devservers.echo_llm import OpenAIServer
from domain.phrases import PHRASES
from projections.runtime import ProjectionService
from schemas import (
    AssistantCreated,
    AssistantUpdated,
    SessionEnded,
    SessionStarted,
    ToolCall,
    ToolResult,
    TranscriptFinal,
    UserText,
    new_id,
)
from settings.config import DialogueSettings, parse
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


# --- the session's language ------------------------------------------------------------------

ZH_PERSONA = PHRASES["zh"].persona


async def test_a_mandarin_assistant_greets_answers_tells_the_time_and_says_goodbye_in_mandarin(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    aid = new_id()
    await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", greeting="你好，我是小智。",
                                       language="zh", tools=["get_time"]))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=aid))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    assert finals(events)[0].text == "你好，我是小智。"

    await bus.publish(UserText(session_id=s, text="现在几点？ use get_time"))
    events = await wait_for(bus, s, lambda ev: len(finals(ev)) == 2)
    result = next(e for e in events if isinstance(e, ToolResult))
    # The time in Mandarin, as the model reads it out: 2026年12月7日 星期一 …，时区 …
    assert re.match(r"^\d{4}年\d{1,2}月\d{1,2}日 星期[一二三四五六日] \d\d:\d\d:\d\d，"
                    r"时区 .+（服务器本地时间），UTC[+-]\d\d:\d\d；ISO ", result.content), result.content
    assert finals(events)[1].text == f"The tool said: {result.content}."
    assert a.requests[-1]["messages"][0] == {"role": "system", "content": ZH_PERSONA}

    await bus.publish(UserText(session_id=s, text="再见"))
    events = await wait_for(bus, s, lambda ev: any(isinstance(e, SessionEnded) for e in ev))
    assert finals(events)[-1].text == "再见！"


async def test_what_the_knowledge_search_found_nothing_in_is_said_in_the_sessions_language(
        bus: Bus, projections: ProjectionService, data_dir: Path) -> None:
    sessions = {}
    for language in ("zh", "en"):
        aid = new_id()
        await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", language=language))
        sessions[language] = "d" + new_id()
        await bus.publish(SessionStarted(session_id=sessions[language], assistant_id=aid))
    await projections.caught_up()
    tool = KnowledgeSearch(bus, data_dir)
    answers = {}
    for language, s in sessions.items():
        token = current_call.set(ToolCall(session_id=s, turn_id=new_id(), call_id="c1",
                                          name="knowledge_search"))
        try:
            answers[language] = await tool.call({"query": "保修期多长？"})
        finally:
            current_call.reset(token)
    assert answers == {"zh": PHRASES["zh"].no_documents, "en": PHRASES["en"].no_documents}
    assert answers["zh"] == "这个助手没有可以查找的文档。"


async def test_an_english_session_is_answered_as_before_even_to_a_chinese_goodbye(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    aid = new_id()
    await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", tools=["get_time"]))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=aid))
    await bus.publish(UserText(session_id=s, text="现在几点？ use get_time"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert re.match(r"^[A-Z][a-z]+day \d\d [A-Z][a-z]+ \d{4}, \d\d:\d\d:\d\d, time zone .+ \(server local "
                    r"time\), UTC[+-]\d\d:\d\d; ISO ", result.content), result.content
    assert a.requests[-1]["messages"][0] == {"role": "system",
                                             "content": DialogueSettings().system_prompt}
    await bus.publish(UserText(session_id=s, text="再见"))
    events = await wait_for(bus, s, lambda ev: any(isinstance(e, SessionEnded) for e in ev))
    assert finals(events)[-1].text == "Goodbye!"


async def test_an_auto_session_answers_in_the_language_of_the_latest_input(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    aid, own = new_id(), new_id()
    await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", language="auto"))
    await bus.publish(AssistantCreated(assistant_id=own, owner_id="u1", language="auto",
                                       persona="You are Zed."))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=aid))
    await bus.publish(UserText(session_id=s, text="今天天气怎么样？"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 1)
    await bus.publish(UserText(session_id=s, text="and in English?"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 2)
    # A transcript says its language; its text is not looked at.
    await bus.publish(TranscriptFinal(session_id=s, text="ni hao", language="zh"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 3)
    assert [r["messages"][0]["content"] for r in a.requests] == [
        ZH_PERSONA, DialogueSettings().system_prompt, ZH_PERSONA]

    # A persona someone wrote is kept, and told the language to answer in.
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, assistant_id=own))
    await bus.publish(UserText(session_id=s, text="你是谁？"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 1)
    assert a.requests[-1]["messages"][0]["content"] == f"You are Zed.\n\n{PHRASES['zh'].answer_in}"


async def test_the_default_assistant_follows_the_clients_language_hint(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Callable[..., Awaitable[ActorHost]],
        projections: ProjectionService) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, language="zh"))
    await bus.publish(UserText(session_id=s, text="hello"))
    await wait_for(bus, s, lambda ev: bool(finals(ev)))
    assert a.requests[-1]["messages"][0]["content"] == ZH_PERSONA
