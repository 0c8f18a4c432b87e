"""A spoken turn's trace: its audio carries none, so it begins where the ASR heard the
utterance, and the rest of the turn (dialogue, LLM, TTS, the edge's first audio) hangs
under it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import websockets
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry import tracing
from tests.api_harness import Api
from tests.fixtures.audio import opus_packets, pcm
from tests.test_tracing import chain, one

pytestmark = [pytest.mark.stack("asr", "dialogue", "tts"), pytest.mark.slow]


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.use_exporter(exporter)
    yield exporter
    tracing.shutdown()


async def test_a_spoken_turn_is_one_trace_from_the_utterance_to_first_audio(
        stack: Api, spans: InMemorySpanExporter) -> None:
    url = stack.edge.url.replace("http://", "ws://") + "/ws?audio=opus"
    async with websockets.connect(url) as ws:
        sid = json.loads(await ws.recv())["session_id"]
        await asyncio.sleep(0.3)  # the ASR subscribes to the session's audio
        for packet in opus_packets(pcm("what_time"), 16000, 60):
            await ws.send(packet)
            await asyncio.sleep(0.005)  # faster than real time: the VAD counts audio time
        async with asyncio.timeout(60):
            while True:
                found = [s for s in spans.get_finished_spans() if s.name == "edge first audio"
                         and (s.attributes or {}).get("vagent.session_id") == sid]
                if found:
                    break
                await asyncio.sleep(0.05)
    first_audio = found[0]
    assert first_audio.context is not None
    turn = sorted((s for s in spans.get_finished_spans()
                   if s.context and s.context.trace_id == first_audio.context.trace_id),
                  key=lambda s: s.start_time or 0)
    assert chain(first_audio, turn) == ["asr utterance", "dialogue transcript.final",
                                        "tts assistant.sentence", "edge first audio"]
    heard = one(turn, "asr utterance")
    assert heard.parent is None and turn[0] is heard
    assert (heard.attributes or {})["vagent.session_id"] == sid
    assert int((heard.attributes or {})["vagent.asr.speech_ms"]) > 500  # type: ignore[arg-type]
    chat = next(s for s in turn if s.name.startswith("chat "))
    assert chain(chat, turn) == ["asr utterance", "dialogue transcript.final", chat.name]
    assert (heard.end_time or 0) <= (one(turn, "dialogue transcript.final").start_time or 0)
