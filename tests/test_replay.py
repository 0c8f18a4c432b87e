"""`vagent replay`: a recorded session (two typed turns, one with a tool call, and a spoken
one) re-run through today's actors in an isolated NATS with another model: the transcripts
are reproduced, the answers' diff is shown, and the original log is left as it was."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from actors.runtime import ActorHost
from bus.client import Bus
from bus.log import load
from bus.subjects import audio_in
from cli.replay import print_report
from devservers.echo_llm import OpenAIServer
from replay.engine import replay_session
from schemas import (
    AssistantMessage,
    AudioParams,
    Event,
    SessionStarted,
    TranscriptFinal,
    TtsStopped,
    UserText,
    new_id,
)
from settings.config import parse
from tests.conftest import wait_for
from tests.fixtures.audio import has_key_words, opus_packets, pcm


class Newer(OpenAIServer):
    """Another "model": it answers differently."""

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        return "Newer model: " + super().reply_for(messages)


@pytest.fixture
def servers() -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    old, new = OpenAIServer().start(), Newer().start()
    yield old, new
    old.stop()
    new.stop()


def answered_and_spoken(turn_id: str):  # type: ignore[no-untyped-def]
    def found(events: list[Event]) -> bool:
        mine = [e for e in events if getattr(e, "turn_id", None) == turn_id]
        return (any(isinstance(e, AssistantMessage) and not e.tool_calls for e in mine)
                and any(isinstance(e, TtsStopped) for e in mine))

    return found


@pytest.mark.slow
async def test_replay_reproduces_transcripts_and_diffs_the_answers(
        bus: Bus, servers: tuple[OpenAIServer, OpenAIServer],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = servers
    config = parse(f'[[llm.providers]]\nname = "echo"\nbase_url = "{old.base_url}"\nmodel = "m"\n')
    suffix = new_id()
    for module, cls in (("asr.actor", "Asr"), ("dialogue.actor", "Dialogue"), ("tts.actor", "Tts"),
                        ("tools.actor", "Tools")):
        monkeypatch.setattr(f"actors.{module}.{cls}.name", f"{cls.lower()}_{suffix}")
    host = ActorHost(bus, ["asr", "dialogue", "tools", "tts"], config)
    await host.start()
    sid = "rp" + new_id()
    try:
        # A client that cancels its own echo: the ASR's canceller aligns the assistant's audio
        # with the microphone's by when frames arrive, which a replay cannot repeat, and this
        # test sends its audio faster than real time, right after the assistant spoke.
        await bus.publish(SessionStarted(
            session_id=sid, transport="test",
            audio_in=AudioParams(format="opus", sample_rate=16000, frame_duration=60),
            audio_out=AudioParams(format="opus", sample_rate=24000, frame_duration=60),
            echo_cancelled=True))
        for text in ("hello there", "use get_time please"):
            typed = UserText(session_id=sid, text=text)
            await bus.publish(typed)
            await wait_for(bus, sid, answered_and_spoken(typed.id), timeout=60)
        await asyncio.sleep(0.3)
        for packet in opus_packets(pcm("what_time"), 16000, 60):
            await bus.publish_core(audio_in(sid), packet)
            await asyncio.sleep(0.005)
        events = await wait_for(bus, sid, lambda es: any(
            isinstance(e, TranscriptFinal) and answered_and_spoken(e.id)(es) for e in es), timeout=60)
    finally:
        await host.stop()
    spoken = next(e for e in events if isinstance(e, TranscriptFinal))
    assert has_key_words("what_time", spoken.text)
    before = [(e.seq, e.data) for e in (await load(bus, "session", sid))[0]]

    report = await replay_session(bus, sid, config=config, llm_base_url=new.base_url, llm_model="m2",
                                  timeout=60)

    assert [d.original.input_type for d in report.turns] == ["user.text", "user.text", "transcript.final"]
    typed, tool, voice = report.turns
    assert voice.replay.transcript == voice.original.transcript == spoken.text  # same audio, same words
    assert voice.same_transcript and typed.same_transcript
    assert typed.original.answer == "You said: hello there."
    assert typed.replay.answer == "Newer model: You said: hello there."
    assert not typed.same_answer and not voice.same_answer
    assert voice.replay.answer == f"Newer model: You said: {spoken.text}."
    assert [t.split("(")[0] for t in tool.original.tools] == ["get_time"] and tool.same_tools
    assert (voice.original.model, voice.replay.model) == ("m", "m2")
    for diff in report.turns:  # measured on both sides
        assert "input → first sentence" in diff.replay.latency_ms or \
            "end of speech → first sentence" in diff.replay.latency_ms
    assert voice.replay.latency_ms["end of speech → first audio"] > 0
    assert old.requests and new.requests  # each server answered its own run

    print_report(report, as_json=False)
    text = capsys.readouterr().out
    assert "≠ answer" in text and "Newer model: You said: hello there." in text
    assert "transcript" in text and "3 turns: 0 answers the same, 1/1 transcripts the same" in text
    print_report(report, as_json=True)
    body = json.loads(capsys.readouterr().out)
    assert [t["same_transcript"] for t in body["turns"]] == [True, True, True]
    assert body["turns"][0]["replay"]["answer"] == "Newer model: You said: hello there."

    after = [(e.seq, e.data) for e in (await load(bus, "session", sid))[0]]
    assert after == before  # nothing was written to the original session
