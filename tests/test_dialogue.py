"""The dialogue actor on the bus: streamed turns, tools, fallback, interruption, exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.runtime import ActorHost
from bus.client import Bus, Message
from bus.log import load
from devservers.echo_llm import OpenAIServer
from domain.phrases import PHRASES
from schemas import (
    AssistantDelta,
    AssistantMessage,
    AssistantSentence,
    Event,
    SessionStarted,
    SessionTools,
    SessionToolSpec,
    ToolCall,
    ToolResult,
    TurnInterrupted,
    UserText,
    decode,
    new_id,
)
from settings.config import Config, parse
from tests.conftest import wait_for


@pytest.fixture
def servers() -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    a, b = OpenAIServer().start(), OpenAIServer().start()
    yield a, b
    a.stop()
    b.stop()


Start = Callable[..., Awaitable[ActorHost]]


def providers_toml(*servers: OpenAIServer) -> str:
    return "".join(f'[[llm.providers]]\nname = "p{i}"\nbase_url = "{s.base_url}"\nmodel = "m{i}"\n'
                   f"first_token_timeout = 2.0\n" for i, s in enumerate(servers))


@pytest.fixture
async def start(bus: Bus, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[Start]:
    """Start actors in this process; durables of their own, so no other test's actors
    share these messages. Stopped (gracefully) after the test."""
    hosts: list[ActorHost] = []
    suffix = new_id()
    monkeypatch.setattr("actors.dialogue.actor.Dialogue.name", "dialogue_" + suffix)
    monkeypatch.setattr("actors.tools.actor.Tools.name", "tools_" + suffix)

    async def run(*names: str, config: Config, data_dir: Path | None = None) -> ActorHost:
        host = ActorHost(bus, list(names), config, data_dir)
        await host.start()
        hosts.append(host)
        return host

    yield run
    for host in hosts:
        await host.stop()


def finals(events: list[Event]) -> list[AssistantMessage]:
    return [e for e in events if isinstance(e, AssistantMessage) and not e.tool_calls]


async def test_a_streamed_turn_emits_sentences_and_a_final_message(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="good morning. how are you"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    final = finals(events)[0]
    assert final.text == "You said: good morning. how are you."
    assert final.provider == "p0" and final.model == "m0" and final.ttft_ms is not None
    assert final.total_ms >= final.ttft_ms and final.usage.completion_tokens > 0  # type: ignore[operator]
    sentences = [e for e in events if isinstance(e, AssistantSentence)]
    assert [x.text for x in sentences] == ["You said: good morning.", "how are you."]
    assert [x.index for x in sentences] == [0, 1] and sentences[0].ttfs_ms is not None
    types = [e.type for e in events]
    assert types.index("turn.started") < types.index("assistant.sentence") < types.index(
        "assistant.message")


async def test_a_tool_call_goes_through_the_tools_actor_and_the_turn_resumes(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.tool_arguments["calculator"] = json.dumps({"expression": "6*7"})
    config = parse(providers_toml(a))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="please use calculator for six times seven"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    types = [e.type for e in events]
    assert types == ["user.text", "turn.started", "assistant.message", "tool.call", "tool.result",
                     "assistant.sentence", "assistant.message"]
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.content == "6*7 = 42" and not result.is_error
    assert finals(events)[0].text == "The tool said: 6*7 = 42."
    # The resumed request carried the call and its result in OpenAI's shape.
    last = a.requests[-1]["messages"]
    assert last[-2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert last[-1]["role"] == "tool" and last[-1]["content"] == "6*7 = 42"
    # The step that called the tool timed the model's first token: the turn's, as it happened.
    step = next(e for e in events if isinstance(e, AssistantMessage) and e.tool_calls)
    assert step.ttft_ms is not None and 0 < step.ttft_ms <= step.total_ms  # type: ignore[operator]


async def test_a_failing_provider_hands_the_turn_to_the_next(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, b = servers
    a.fail_status = 503
    config = parse(providers_toml(a, b))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="hello"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    assert finals(events)[0].provider == "p1"


async def test_no_provider_answering_is_an_error_event(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.fail_status = 500
    config = parse(providers_toml(a))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="hello"))
    events = await wait_for(bus, s, lambda ev: any(e.type == "error" for e in ev))
    error = next(e for e in events if e.type == "error")
    assert error.code == "llm_unavailable" and "HTTP 500" in error.message  # type: ignore[attr-defined]
    assert error.message.startswith(PHRASES["en"].llm_unavailable)  # type: ignore[attr-defined]

    # Shown to the user (a device's screen) in the session's language, then why.
    s = "d" + new_id()
    await bus.publish(SessionStarted(session_id=s, language="zh"))  # the default assistant's hint
    await bus.publish(UserText(session_id=s, text="hello"))
    events = await wait_for(bus, s, lambda ev: any(e.type == "error" for e in ev))
    error = next(e for e in events if e.type == "error")
    assert error.message.startswith("抱歉，现在无法回答") and "HTTP 500" in error.message  # type: ignore[attr-defined]


async def test_a_new_input_interrupts_the_running_turn(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.token_delay = 0.25
    config = parse(providers_toml(a))
    await start("dialogue", config=config)
    s = "d" + new_id()
    first = UserText(session_id=s, text="one two three four five six seven eight nine ten")
    await bus.publish(first)
    await wait_for(bus, s, lambda ev: any(e.type == "turn.started" for e in ev))
    await asyncio.sleep(0.8)  # a few tokens out
    await bus.publish(UserText(session_id=s, text="stop"))
    events = await wait_for(bus, s, lambda ev: len([e for e in ev if isinstance(e, AssistantMessage)]) >= 2)
    cut = next(e for e in events if isinstance(e, AssistantMessage) and e.turn_id == first.id)
    assert cut.interrupted and 0 < len(cut.text) < len("You said: " + first.text)
    assert "You said: one two three four five six seven eight nine ten." != cut.text
    stop = next(e for e in events if isinstance(e, TurnInterrupted))
    assert stop.turn_id == first.id and stop.reason == "new_input"
    second = next(e for e in events if isinstance(e, AssistantMessage) and e.turn_id != first.id)
    assert second.text == "You said: stop." and not second.interrupted
    # The next request's history holds only what was produced of the first answer.
    history = a.requests[-1]["messages"]
    assert history[-2] == {"role": "assistant", "content": cut.text}


async def test_a_client_abort_stops_the_stream(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.token_delay = 0.25
    config = parse(providers_toml(a))
    await start("dialogue", config=config)
    s = "d" + new_id()
    question = UserText(session_id=s, text="a long answer please with many many words")
    await bus.publish(question)
    await wait_for(bus, s, lambda ev: any(e.type == "turn.started" for e in ev))
    await asyncio.sleep(0.6)
    await bus.publish(TurnInterrupted(session_id=s, turn_id=question.id, reason="abort"))
    events = await wait_for(bus, s, lambda ev: any(isinstance(e, AssistantMessage) for e in ev))
    message = next(e for e in events if isinstance(e, AssistantMessage))
    assert message.interrupted and len(message.text) < len("You said: " + question.text)


async def test_goodbye_ends_the_session_politely(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    config = parse(providers_toml(a))
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="ok, bye!"))
    events = await wait_for(bus, s, lambda ev: any(e.type == "session.ended" for e in ev))
    assert [e.type for e in events] == ["user.text", "turn.started", "assistant.sentence",
                                        "assistant.message", "session.ended"]
    assert events[-1].reason == "user_exit"  # type: ignore[attr-defined]
    assert a.requests == []  # no LLM needed to say goodbye


async def test_a_sessions_device_tools_join_its_tool_list_and_are_routed_to_the_edge(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.tool_arguments["set_volume"] = json.dumps({"level": 30})
    config = parse(providers_toml(a))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(SessionTools(session_id=s, tools=[SessionToolSpec(
        name="set_volume", description="Set the speaker volume",
        parameters={"type": "object", "properties": {"level": {"type": "integer"}}})]))
    await bus.publish(UserText(session_id=s, text="please set_volume to thirty"))
    events = await wait_for(bus, s, lambda ev: any(e.type == "tool.call" for e in ev))
    call = next(e for e in events if isinstance(e, ToolCall))
    assert call.name == "set_volume" and call.route == "device"
    offered = [t["function"]["name"] for t in a.requests[-1]["tools"]]
    assert "set_volume" in offered and "calculator" in offered
    await asyncio.sleep(0.5)  # the tools actor leaves a device's call alone
    entries, _ = await load(bus, "session", s)
    assert not any(isinstance(e.event, ToolResult) for e in entries)
    # The edge answers for the device; the turn resumes.
    await bus.publish(ToolResult(session_id=s, turn_id=call.turn_id, call_id=call.call_id,
                                 name="set_volume", content="volume is 30"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    assert finals(events)[0].text == "The tool said: volume is 30."


async def test_tools_that_raise_hang_or_flood_still_let_the_turn_complete(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer],
        monkeypatch: pytest.MonkeyPatch, start: Start) -> None:
    from actors.tools import builtin
    from tests.test_tools_actor import TEST_BUILTINS

    for name, target in TEST_BUILTINS.items():
        monkeypatch.setitem(builtin.BUILTINS, name, target)
    a, _ = servers
    config = parse(providers_toml(a) + (
        '[tools]\nbuiltins = ["explode", "stall", "flood"]\ntimeout = 1.0\n'
        "max_result_chars = 500\n"))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="use explode, stall and flood at once"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    results = {e.name: e for e in events if isinstance(e, ToolResult)}
    assert set(results) == {"explode", "stall", "flood"}  # one call each, in parallel
    assert results["explode"].is_error and "kaboom" in results["explode"].content
    assert results["stall"].is_error and "1" in results["stall"].content
    assert len(results["flood"].content) < 1000
    final = finals(events)[0]
    assert final.text.startswith("The tool said:") and not final.interrupted
    types = [e.type for e in events]
    assert types[-1] == "assistant.message" and types.count("tool.call") == 3


async def test_tool_steps_continue_up_to_the_limit_then_the_model_must_answer(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.tool_arguments["calculator"] = json.dumps({"expression": "1+1"})
    a.follow_ups = ["calculator", "calculator", "calculator"]  # it would go on and on
    config = parse(providers_toml(a) + "[tools]\nmax_steps = 3\n")
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="use calculator"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    assert [e.type for e in events].count("tool.result") == 3
    assert "tools" in a.requests[-2] and "tools" not in a.requests[-1]  # the 4th request: none
    assert finals(events)[0].text == "The tool said: 1+1 = 2."
    steps = [e for e in events if isinstance(e, AssistantMessage) and e.tool_calls]
    assert len({c.call_id for m in steps for c in m.tool_calls}) == 3


async def test_a_small_model_gets_the_question_alone_to_decide_on_a_tool(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.small_model = True  # bare JSON calls, and only for a question without history
    a.tool_arguments["calculator"] = json.dumps({"expression": "17*23"})
    config = parse(providers_toml(a) + "tool_probe = true\n")
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="hello"))
    await wait_for(bus, s, lambda ev: len(finals(ev)) == 1)
    # Probed without tools' luck ("hello" names none), then answered with the history.
    assert [len(r["messages"]) for r in a.requests] == [2, 2]
    assert "tools" in a.requests[0] and "tools" not in a.requests[1]
    await bus.publish(UserText(session_id=s, text="use calculator for 17 times 23"))
    events = await wait_for(bus, s, lambda ev: len(finals(ev)) == 2)
    call = next(e for e in events if isinstance(e, ToolCall))
    assert call.name == "calculator" and json.loads(call.arguments) == {"expression": "17*23"}
    assert not any("{" in e.text for e in events if isinstance(e, AssistantSentence))  # JSON unspoken
    assert len(a.requests[2]["messages"]) == 2  # the probe: system prompt and question alone
    # The answer: results in the system prompt, the conversation, no tools offered again.
    answer = a.requests[3]
    assert "tools" not in answer and answer["messages"][-1]["content"].startswith("use calculator")
    assert "- calculator: 17*23 = 391" in answer["messages"][0]["content"]
    assert all(m["role"] != "tool" for m in answer["messages"])


# --- tool calls written as text, naming tools that do not exist ---------------------------

class Scripted(OpenAIServer):
    """Answers with `script`'s texts in turn (streamed word by word, as the echo server
    does), then echoes."""

    def __init__(self, *script: str) -> None:
        super().__init__()
        self.script = list(script)

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        return self.script.pop(0) if self.script else super().reply_for(messages)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    started: list[Scripted] = []

    def make(*script: str) -> Scripted:
        started.append(Scripted(*script).start())
        return started[-1]

    yield make
    for server in started:
        server.stop()


@contextlib.asynccontextmanager
async def live_deltas(bus: Bus, session_id: str) -> AsyncIterator[list[str]]:
    """The text of every assistant.delta published for the session meanwhile."""
    seen: list[str] = []

    async def on_message(msg: Message) -> None:
        event = decode(msg.data)
        if isinstance(event, AssistantDelta):
            seen.append(event.text)

    sub = await bus.subscribe(f"vagent.session.{session_id}.live.assistant.delta", on_message)
    await bus.flush()
    try:
        yield seen
    finally:
        await asyncio.sleep(0.2)  # deltas still on their way
        await sub.stop()


def unseen(deltas: list[str], events: list[Event], *fragments: str) -> None:
    """None of `fragments` was shown (a delta) or spoken or displayed (a sentence)."""
    sentences = [t for e in events if isinstance(e, AssistantSentence)
                 for t in (e.text, e.display_text or "")]
    shown = "".join(deltas)
    for fragment in fragments:
        assert fragment not in shown, (fragment, deltas)
        assert not any(fragment in t for t in sentences), (fragment, sentences)


async def test_a_call_to_an_unknown_tool_is_never_shown_or_spoken_and_the_model_is_told(
        bus: Bus, scripted: Callable[..., Scripted], start: Start) -> None:
    bare = '{"name": "lookup_weather", "arguments": {"city": "Oslo"}}'
    llm = scripted(bare, "I cannot look up the weather, sorry.")
    config = parse(providers_toml(llm))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    async with live_deltas(bus, s) as deltas:
        await bus.publish(UserText(session_id=s, text="what is the weather in Oslo?"))
        events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    unseen(deltas, events, "{", "lookup_weather")
    step = next(e for e in events if isinstance(e, AssistantMessage) and e.tool_calls)
    assert step.text == "" and step.withheld == bare  # recorded, word for word
    call = next(e for e in events if isinstance(e, ToolCall))
    assert (call.name, call.route) == ("lookup_weather", "dialogue")
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(results) == 1 and results[0].is_error  # the tools actor left it alone
    assert results[0].content.startswith("unknown tool 'lookup_weather'; available: ")
    assert "calculator" in results[0].content and "get_time" in results[0].content
    # The model read the refusal and answered in words.
    assert llm.requests[-1]["messages"][-1]["content"] == results[0].content
    assert finals(events)[0].text == "I cannot look up the weather, sorry."
    assert " ".join(e.text for e in events if isinstance(e, AssistantSentence)) == (
        "I cannot look up the weather, sorry.")


async def test_unknown_tool_calls_without_a_second_chance_end_in_a_short_apology(
        bus: Bus, scripted: Callable[..., Scripted], start: Start) -> None:
    fenced = '```json {"name": "Ada"} ```'
    llm = scripted(fenced, "\n" + fenced)  # it does it again after being told
    config = parse(providers_toml(llm))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    async with live_deltas(bus, s) as deltas:
        await bus.publish(UserText(session_id=s, text="my name is Ada"))
        events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    unseen(deltas, events, "{", "`", "Ada")
    assert len(llm.requests) == 2  # one retry, then no more
    final = finals(events)[0]
    assert final.text == PHRASES["en"].unusable_call and final.withheld and "Ada" in final.withheld
    assert "".join(deltas) == PHRASES["en"].unusable_call
    assert [e.text for e in events if isinstance(e, AssistantSentence)] == [
        "Sorry, I couldn't work that out.", "Could you ask me another way?"]



async def test_a_call_with_no_tools_to_offer_is_answered_with_the_apology_at_once(
        bus: Bus, scripted: Callable[..., Scripted], start: Start) -> None:
    llm = scripted('{"name": "calculate", "arguments": {"expression": "2+2"}}')
    config = parse(providers_toml(llm) + "[tools]\nmax_steps = 0\n")
    await start("dialogue", config=config)
    s = "d" + new_id()
    async with live_deltas(bus, s) as deltas:
        await bus.publish(UserText(session_id=s, text="two plus two"))
        events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    unseen(deltas, events, "{", "calculate")
    assert "tools" not in llm.requests[0] and len(llm.requests) == 1
    assert finals(events)[0].text == PHRASES["en"].unusable_call
    assert not any(isinstance(e, ToolCall) for e in events)

async def test_a_misnamed_call_is_repaired_onto_the_tool_that_does_it(
        bus: Bus, scripted: Callable[..., Scripted], start: Start) -> None:
    bare = '{"name": "square_root", "arguments": {"number": 16}}'
    llm = scripted(bare)
    config = parse(providers_toml(llm))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    async with live_deltas(bus, s) as deltas:
        await bus.publish(UserText(session_id=s, text="what is the square root of sixteen?"))
        events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    unseen(deltas, events, "{", "square_root")
    call = next(e for e in events if isinstance(e, ToolCall))
    assert (call.name, json.loads(call.arguments), call.route) == (
        "calculator", {"expression": "sqrt(16)"}, "tools")
    step = next(e for e in events if isinstance(e, AssistantMessage) and e.tool_calls)
    assert step.withheld == bare
    assert next(e for e in events if isinstance(e, ToolResult)).content == "sqrt(16) = 4"
    assert finals(events)[0].text == "The tool said: sqrt(16) = 4."


async def test_prose_streams_at_once_and_json_inside_it_is_taken_out(
        bus: Bus, scripted: Callable[..., Scripted], start: Start) -> None:
    llm = scripted('Let me check. {"name": "get_time", "arguments": {}} One moment please.')
    llm.token_delay = 0.3
    config = parse(providers_toml(llm))
    await start("dialogue", config=config)
    s = "d" + new_id()
    async with live_deltas(bus, s) as deltas:
        await bus.publish(UserText(session_id=s, text="what time is it?"))
        await wait_for(bus, s, lambda ev: any(isinstance(e, AssistantSentence) for e in ev))
        first_sentence_at = len(deltas)
        events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    # The first sentence was out before the JSON that follows it had even arrived.
    assert "".join(deltas[:first_sentence_at]) == "Let me check. "
    unseen(deltas, events, "{", "get_time")
    final = finals(events)[0]
    assert final.text == "Let me check.  One moment please." and "get_time" in (final.withheld or "")
    assert not any(isinstance(e, ToolCall) for e in events)  # mixed with prose: not run


@pytest.fixture
def bogota() -> Iterator[None]:
    """The server's local zone is America/Bogota (UTC-5 all year, not Paris) for the tools
    actors this process runs, so the local time is told apart from any zone a test names."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Bogota"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


async def test_what_time_is_it_is_answered_in_the_local_zone_whatever_zone_the_model_copies(
        bus: Bus, scripted: Callable[..., Scripted], bogota: None, start: Start) -> None:
    paris = '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}'
    llm = scripted(paris)  # then it reads the result out
    config = parse(providers_toml(llm))
    await start("tools", config=config)
    await start("dialogue", config=config)
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="what time is it?"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    result = next(e for e in events if isinstance(e, ToolResult))
    assert "(server local time), UTC-05:00" in result.content and "Paris" not in result.content
    assert finals(events)[0].text == f"The tool said: {result.content}."

    llm.script = [paris]  # the same call, now that the user named the place
    await bus.publish(UserText(session_id=s, text="and what time is it in Paris?"))
    events = await wait_for(bus, s, lambda ev: len(finals(ev)) == 2)
    result = [e for e in events if isinstance(e, ToolResult)][-1]
    assert "time zone Europe/Paris, UTC+0" in result.content  # +01:00, +02:00 in summer


async def test_an_answer_that_is_only_code_is_read_out_rather_than_left_silent(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer], start: Start) -> None:
    a, _ = servers
    a.reply_for = lambda messages: "```python\n17 * 23\n```"  # type: ignore[method-assign]
    await start("dialogue", config=parse(providers_toml(a)))
    s = "d" + new_id()
    await bus.publish(UserText(session_id=s, text="calculate 17 times 23"))
    events = await wait_for(bus, s, lambda ev: bool(finals(ev)))
    sentences = [e for e in events if isinstance(e, AssistantSentence)]
    assert [x.text for x in sentences] == ["17 * 23"], events
    assert finals(events)[0].text == "```python\n17 * 23\n```"
