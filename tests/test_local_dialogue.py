"""The default conversation with the real default model: Qwen2.5-0.5B from the
PyPI wheels, served by the local llama.cpp server, behind the dialogue and tools actors with
the provider settings `vagent up` gives it. A tiny model's wording varies from run to run, so
only invariants are asserted: no tool-call text is ever shown or spoken, every turn ends in a
spoken answer, and "what time is it?" is never answered in a zone nobody asked for."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable, Iterator

import pytest

from actors.dialogue.local_llm import LocalLLMServer
from actors.runtime import ActorHost
from bus.client import Bus
from schemas import AssistantMessage, AssistantSentence, Event, ToolCall, ToolResult, UserText, new_id
from settings.config import parse
from tests.conftest import wait_for
from tests.test_dialogue import bogota, finals, live_deltas, start

__all__ = ["bogota", "start"]  # fixtures
pytestmark = pytest.mark.slow

# What tool-call text looks like, whatever tool it names.
CALL_TEXT = re.compile(r'\{\s*["\']|"name"|"arguments"|<tool_call>|</tool_call>|```')


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("qwen")
    server = LocalLLMServer("qwen2.5-0.5b", data)
    try:
        yield server.start(180)
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)  # the assembled model: 469 MiB


def assert_no_call_text(deltas: list[str], events: list[Event]) -> None:
    shown = "".join(deltas)
    assert not CALL_TEXT.search(shown), shown
    for event in events:
        if isinstance(event, AssistantSentence):
            for text in (event.text, event.display_text or ""):
                assert not CALL_TEXT.search(text), text
        elif isinstance(event, AssistantMessage) and not event.tool_calls:
            assert not CALL_TEXT.search(event.text), event.text


async def test_the_default_model_never_shows_call_text_nor_answers_in_a_zone_nobody_named(
        bus: Bus, local_model: str, bogota: None, monkeypatch: pytest.MonkeyPatch,
        start: Callable[..., Awaitable[ActorHost]]) -> None:
    for name in ("OPENAI_BASE_URL", "VAGENT_LLM_BASE_URL", "VAGENT_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAGENT_LOCAL_LLM_URL", local_model)  # the provider `vagent up` makes
    config = parse("")
    await start("tools", config=config)
    await start("dialogue", config=config)
    questions = ["what time is it?", "what is the square root of 16?", "my name is Ada",
                 "calculate 17 times 23", "what time is it?"]
    s = "local" + new_id()
    async with live_deltas(bus, s) as deltas:
        for n, question in enumerate(questions, start=1):
            await bus.publish(UserText(session_id=s, text=question))
            events = await wait_for(bus, s, lambda ev, n=n: len(finals(ev)) == n, timeout=240)
            await asyncio.sleep(0.1)
    assert_no_call_text(deltas, events)
    answers = finals(events)
    assert all(a.provider == "local" and not a.interrupted for a in answers), answers
    spoken = {e.turn_id for e in events if isinstance(e, AssistantSentence)}
    sayable = {a.turn_id for a in answers if any(c.isalnum() for c in a.text)}
    assert spoken >= sayable, f"every answer was spoken: {[a.text for a in answers]}"
    # "What time is it?" named no place: whatever the model passed, the local zone answered.
    times = {e.id for e in events if isinstance(e, UserText) and e.text == "what time is it?"}
    for event in events:
        if isinstance(event, ToolResult) and event.turn_id in times and event.name == "get_time":
            assert "UTC-05:00" in event.content and "Paris" not in event.content, event.content
    for event in events:
        if isinstance(event, AssistantSentence | AssistantMessage) and event.turn_id in times:
            assert "Europe/Paris" not in event.text, event.text
    # Calls the model made up were repaired or refused, never run as named.
    offered = {"get_time", "calculator", "knowledge_search"}
    for call in (e for e in events if isinstance(e, ToolCall)):
        assert call.name in offered or call.route == "dialogue", call
