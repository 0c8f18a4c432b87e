"""The actor runtime with the real dialogue actor, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from actors.runtime import ActorHost
from bus.client import Bus
from bus.health import health
from bus.log import Entry, load
from bus.subjects import subject_of
from bus.trace import new_traceparent, trace_id
from devservers.echo_llm import OpenAIServer
from schemas import UserText, encode, new_id


@pytest.fixture
async def dialogue(bus: Bus, llm: OpenAIServer, monkeypatch: pytest.MonkeyPatch
                   ) -> AsyncIterator[ActorHost]:
    monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
    # A durable of its own, so no other test's dialogue shares this one's messages.
    monkeypatch.setattr("actors.dialogue.actor.Dialogue.name", "dialogue_" + new_id())
    host = ActorHost(bus, ["dialogue"])
    await host.start()
    yield host
    await host.stop()


async def until_types(bus: Bus, session_id: str, count: int) -> list[Entry]:
    async with asyncio.timeout(15):
        while True:
            entries, _ = await load(bus, "session", session_id)
            if sum(e.event.type == "assistant.message" for e in entries) >= count:  # type: ignore[union-attr]
                return entries
            await asyncio.sleep(0.05)


async def test_trace_and_cause_travel_with_every_emitted_event(bus: Bus, dialogue: ActorHost) -> None:
    s = "a" + new_id()
    question = UserText(session_id=s, text="hi")
    traceparent = new_traceparent()
    # Published as an integration would, with its own trace context.
    await bus.js.publish(subject_of(question), encode(question),
                         headers={"Nats-Msg-Id": question.id, "traceparent": traceparent})
    entries = await until_types(bus, s, 1)
    emitted = [e for e in entries if e.event.id != question.id]  # type: ignore[union-attr]
    assert [e.event.type for e in emitted] == ["turn.started", "assistant.sentence",  # type: ignore[union-attr]
                                              "assistant.message"]
    for entry in emitted:
        assert entry.event.causation_id == question.id  # type: ignore[union-attr]
        assert entry.event.turn_id == question.id  # type: ignore[union-attr]
        assert trace_id(entry.headers["traceparent"]) == trace_id(traceparent)
        assert entry.headers["traceparent"] != traceparent  # a span of its own
        assert entry.headers["Nats-Msg-Id"] == entry.event.id  # type: ignore[union-attr]


async def test_second_turn_sees_history_and_an_identical_system_prompt(
        bus: Bus, dialogue: ActorHost, llm: OpenAIServer) -> None:
    s = "a" + new_id()
    await bus.publish(UserText(session_id=s, text="first"))
    await until_types(bus, s, 1)
    await bus.publish(UserText(session_id=s, text="second"))
    await until_types(bus, s, 2)
    first, second = [r["messages"] for r in llm.requests
                     if any(m["content"] in ("first", "second") for m in r["messages"][-1:])][-2:]
    assert first[0] == second[0] and first[0]["role"] == "system"
    assert [m["content"] for m in second[1:]] == ["first", "You said: first.", "second"]


async def test_running_actors_report_alive(bus: Bus, dialogue: ActorHost) -> None:
    name = dialogue.actors[0].name
    report = await health(bus, [name, "nobody"])
    assert report.nats and name in report.actors and report.missing == ["nobody"]
    assert not report.ok


def test_effects_outside_the_handler_go_through_context_and_its_emits(bus: Bus) -> None:
    """What the TTS and ASR emit after their handler returned is stamped by a Context too:
    an undeclared type is refused, an id reserved earlier and another causation are kept."""
    from actors.base import Context
    from actors.tts.actor import Tts
    from schemas import SessionStarted, TranscriptFinal, TtsStarted, derived_id

    started = SessionStarted(session_id="s" + new_id(), transport="test")
    ctx = Context(Tts(bus), started)
    assert ctx.traceparent is None  # no delivery: each effect starts a trace of its own
    with pytest.raises(ValueError, match=r"does not declare 'transcript\.final'"):
        ctx.stamp(TranscriptFinal(session_id=started.session_id, text="hi"))
    reserved = ctx.next_id()
    assert reserved == derived_id(started.id, "tts", 0)
    event = ctx.stamp(TtsStarted(session_id=started.session_id, turn_id="t1", voice="v"))
    assert (event.id, event.causation_id) == (derived_id(started.id, "tts", 1), started.id)
    event = ctx.stamp(TtsStarted(session_id=started.session_id, turn_id="t1", voice="v"),
                      id=reserved, causation_id="other")
    assert (event.id, event.causation_id) == (reserved, "other")


def test_the_redelivery_wait_is_each_actors_own_unless_the_settings_name_one(bus: Bus) -> None:
    from actors.indexer import Indexer
    from actors.tts.actor import Tts
    from settings.config import parse

    assert [a(bus).consumer_spec().ack_wait for a in (Tts, Indexer)] == [30.0, 60.0]
    config = parse("[actors]\nack_wait = 2\n")
    assert [a(bus, config).consumer_spec().ack_wait for a in (Tts, Indexer)] == [2.0, 2.0]
