"""A spoken turn's trace: its audio carries none, so it begins where the ASR heard the
utterance, and the rest of the turn (dialogue, LLM, TTS, the edge's first audio) hangs
under it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.server import free_port
from devservers.echo_llm import OpenAIServer
from tests.api_harness import Api
from tests.fixtures.audio import opus_packets, pcm
from tests.procs import running
from tests.test_tracing import Receiver, chain, one, receiver, spans

__all__ = ["receiver", "spans"]  # fixtures

pytestmark = [pytest.mark.stack("asr", "dialogue", "tts"), pytest.mark.slow]


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


async def test_vagent_up_exports_a_spoken_turn_over_otlp(receiver: Receiver, llm: OpenAIServer,
                                                        tmp_path: Path) -> None:
    """The same through `vagent up`, every actor in it, to a collector over OTLP/HTTP."""
    settings = tmp_path / "vagent.toml"
    settings.write_text(f'[telemetry]\notlp_endpoint = "{receiver.url}"\nservice_name = "voice"\n')
    port = free_port()
    with running(["up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"),
                  "--edge-port", str(port), "--actors", "asr,dialogue,tts"], "vagent is up",
                 OPENAI_BASE_URL=llm.base_url, VAGENT_CONFIG=str(settings),
                 OTEL_BSP_SCHEDULE_DELAY="100"):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?audio=opus") as ws:
            sid = json.loads(await ws.recv())["session_id"]
            await asyncio.sleep(0.3)  # the ASR subscribes to the session's audio
            for packet in opus_packets(pcm("what_time"), 16000, 60):
                await ws.send(packet)
                await asyncio.sleep(0.005)
            async with asyncio.timeout(60):
                while not isinstance(await ws.recv(), bytes):  # the answer's first audio
                    pass
        async with asyncio.timeout(20):
            while not any(span.name == "edge first audio" for _, span in receiver.spans):
                await asyncio.sleep(0.1)
    first = next(span for _, span in receiver.spans if span.name == "edge first audio")
    turn = {span.span_id: (service, span) for service, span in receiver.spans
            if span.trace_id == first.trace_id}
    names, at = [], first
    while True:  # up the parents, from the first audio to the root
        names.append((turn[at.span_id][0], at.name))
        if not at.parent_span_id:
            break
        at = turn[at.parent_span_id][1]
    assert names[::-1] == [("voice-actors", "asr utterance"),
                           ("voice-actors", "dialogue transcript.final"),
                           ("voice-actors", "tts assistant.sentence"),
                           ("voice-edge", "edge first audio")]
    heard = next(span for _, span in turn.values() if span.name == "asr utterance")
    assert any(a.key == "vagent.session_id" and a.value.string_value == sid
               for a in heard.attributes)
    assert any(span.name.startswith("chat ") for _, span in turn.values())
