"""A full voice turn on the bus: Opus frames of a spoken question in, the transcript,
an (instant) LLM answer, and the answer's Opus frames out, in order and decodable."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from actors.runtime import ActorHost
from audio.decode import Decoder
from bus.client import Bus, Message
from bus.log import load
from bus.subjects import audio_in, audio_out
from devservers.echo_llm import OpenAIServer
from schemas import AssistantMessage, AudioParams, SessionStarted, TranscriptFinal, TtsSentence, new_id
from settings.config import parse
from tests.fixtures.audio import has_key_words, opus_packets, pcm


@pytest.fixture
def echo() -> Iterator[OpenAIServer]:
    server = OpenAIServer().start()
    yield server
    server.stop()


@pytest.mark.slow
async def test_spoken_question_in_spoken_answer_out(bus: Bus, echo: OpenAIServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse(f'[[llm.providers]]\nname = "echo"\nbase_url = "{echo.base_url}"\nmodel = "m"\n')
    suffix = new_id()
    for module, cls in (("asr.actor", "Asr"), ("dialogue.actor", "Dialogue"), ("tts.actor", "Tts")):
        monkeypatch.setattr(f"actors.{module}.{cls}.name", f"{cls.lower()}_{suffix}")
    host = ActorHost(bus, ["asr", "dialogue", "tts"], config)
    await host.start()
    sid = "v" + new_id()
    frames: list[bytes] = []

    async def collect(msg: Message) -> None:
        frames.append(msg.data)

    sub = await bus.subscribe(audio_out(sid), collect)
    try:
        await bus.publish(SessionStarted(
            session_id=sid, transport="test",
            audio_in=AudioParams(format="opus", sample_rate=16000, frame_duration=60),
            audio_out=AudioParams(format="opus", sample_rate=24000, frame_duration=60)))
        await asyncio.sleep(0.3)  # the ASR worker subscribes to the session's audio
        for packet in opus_packets(pcm("what_time"), 16000, 60):
            await bus.publish_core(audio_in(sid), packet)
            await asyncio.sleep(0.005)  # faster than real time: the VAD counts audio time
        async with asyncio.timeout(60):
            while True:
                entries, _ = await load(bus, "session", sid)
                events = [e.event for e in entries]
                if any(e.type == "tts.stopped" for e in events):  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.1)
    finally:
        await sub.stop()
        await host.stop()

    types = [e.type for e in events]  # type: ignore[union-attr]
    order = ["speech.started", "speech.stopped", "transcript.final", "turn.started",
             "assistant.sentence", "tts.started", "tts.sentence", "tts.stopped"]
    assert [t for t in types if t in order] == sorted((t for t in types if t in order),
                                                      key=order.index)
    final = next(e for e in events if isinstance(e, TranscriptFinal))
    assert has_key_words("what_time", final.text)
    answer = next(e for e in events if isinstance(e, AssistantMessage))
    assert answer.text == f"You said: {final.text}."
    spoken = [e for e in events if isinstance(e, TtsSentence)]
    assert [s.index for s in spoken] == list(range(len(spoken))) and spoken
    # Every frame decodes, and together they last as long as the sentences said they would.
    decoder = Decoder("opus", 24000)
    audio = b"".join(decoder.decode(f) for f in frames) + decoder.flush()
    heard_ms = len(audio) / 2 / 16000 * 1000
    expected_ms = sum(s.duration_ms for s in spoken)
    assert len(frames) >= expected_ms / 60 - 1
    assert abs(heard_ms - expected_ms) <= 200, (heard_ms, expected_ms)
    assert final.audio is not None and final.audio.bucket == "audio"  # the utterance is kept
