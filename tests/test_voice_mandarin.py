"""A Mandarin voice turn end to end on a real stack (NATS, the ASR, the dialogue with the
echoing LLM, the TTS): a spoken question from the committed set to an assistant whose
language is `zh` is heard by whisper and answered in spoken Mandarin by Kokoro, whose audio
whisper hears back as the answer's text. Once over `/ws` as a client streams it, once
through `vagent say --audio`."""

from __future__ import annotations

import asyncio
import json
import re
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from actors.asr.engine_whisper import WhisperEngine
from audio.encode import resample
from benches.speech_set import RATE, cer, clips
from bus.server import EmbeddedServer
from schemas import AssistantMessage, TranscriptFinal, new_id
from tests.api_harness import Api
from tests.conftest import wait_for
from tests.procs import vagent
from tests.test_asr_mandarin import assistant
from tests.test_ws import ws_url

pytestmark = [pytest.mark.stack("asr", "dialogue", "tts"), pytest.mark.slow]

FRAME_MS = 20
# The edge's pcm16 audio over /ws: 16 kHz up, 24 kHz down.
WS_OUT_RATE = 24000


@pytest.fixture(scope="module")
async def whisper(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WhisperEngine]:
    """The test's own ear: Mandarin audio back to text."""
    engine = WhisperEngine(tmp_path_factory.mktemp("whisper"))
    await engine.load()
    yield engine
    await engine.close()


def silence(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


async def mandarin_assistant(stack: Api) -> tuple[str, str]:
    """A fresh user's token and their assistant whose language is zh."""
    headers = await stack.user()
    return headers["Authorization"].split()[1], await assistant(stack, headers, language="zh")


async def test_a_spoken_mandarin_question_over_ws_is_answered_in_spoken_mandarin(
        stack: Api, whisper: WhisperEngine) -> None:
    (question,) = clips("zh", ["weather"])
    token, assistant_id = await mandarin_assistant(stack)
    messages: list[dict[str, Any]] = []
    audio = bytearray()
    async with websockets.connect(ws_url(stack, f"token={token}&assistant_id={assistant_id}"
                                              "&audio=pcm16")) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "session"

        async def speak() -> None:
            # Silence first (the ASR worker claims the session meanwhile), then the question
            # and the silence that ends it, at real time as a microphone would.
            data = silence(1000) + question.pcm + silence(1500)
            frame = RATE * 2 * FRAME_MS // 1000
            for i in range(0, len(data), frame):
                await ws.send(data[i:i + frame])
                await asyncio.sleep(FRAME_MS / 1000)

        async def listen() -> None:
            while not any(m["type"] == "tts.stopped" for m in messages):
                message = await ws.recv()
                if isinstance(message, bytes):
                    audio.extend(message)
                else:
                    messages.append(json.loads(message))

        async with asyncio.timeout(180):
            await asyncio.gather(speak(), listen())
    (final,) = [m for m in messages if m["type"] == "transcript.final"]
    assert (final["provider"], final["language"]) == ("whisper", "zh")
    assert cer(question.text, final["text"]) <= 0.15, final["text"]
    (answer,) = [m for m in messages if m["type"] == "assistant.message"]
    assert answer["text"] == f"你说：{final['text']}"  # the echo LLM, answering in Mandarin
    started = [m for m in messages if m["type"] == "tts.started"]
    assert started and all(m["provider"] == "kokoro" for m in started), started
    heard = await whisper.transcribe_async(resample(bytes(audio), WS_OUT_RATE, RATE))
    assert cer(answer["text"], heard) <= 0.15, (answer["text"], heard)


async def test_the_same_through_vagent_say_audio(stack: Api, module_nats: EmbeddedServer,
                                                 whisper: WhisperEngine, tmp_path: Path) -> None:
    """`vagent say --audio FILE --assistant ID --session ID`: a new session of the Mandarin
    assistant, the spoken answer written to a WAV."""
    _, assistant_id = await mandarin_assistant(stack)
    sid = "say-zh-" + new_id().lower()
    answer_wav = tmp_path / "answer.wav"
    (question,) = clips("zh", ["time"])
    question_wav = tmp_path / "question.wav"
    with wave.open(str(question_wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(question.pcm)
    done = await asyncio.to_thread(
        vagent, "say", "--audio", str(question_wav), "--session", sid, "--assistant", assistant_id,
        "--out", str(answer_wav), "--nats", module_nats.url, timeout=240)
    assert done.returncode == 0, done.stderr
    (said,) = re.findall(r"^you> (.*)$", done.stdout, re.M)
    assert cer(question.text, said) <= 0.15, said
    events = await wait_for(stack.services.bus, sid,
                            lambda ev: any(isinstance(e, AssistantMessage) for e in ev))
    (final,) = [e for e in events if isinstance(e, TranscriptFinal)]
    (answer,) = [e for e in events if isinstance(e, AssistantMessage)]
    assert final.text == said and answer.text == f"你说：{said}" and answer.text in done.stdout
    with wave.open(str(answer_wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        spoken = w.readframes(w.getnframes())
    heard = await whisper.transcribe_async(spoken)
    assert cer(answer.text, heard) <= 0.15, (answer.text, heard)
