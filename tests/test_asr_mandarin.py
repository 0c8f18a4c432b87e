"""Mandarin through the ASR actor of a real stack: an assistant whose language is `zh` is
heard by whisper (character error rate on the committed clips within bounds), one whose
language is left at `en` by moonshine, as before."""

from __future__ import annotations

import asyncio
import time

import pytest

from benches.speech_set import cer, clips, error_rate
from bus.client import Bus
from bus.subjects import audio_in
from edge.xiaozhi import protocol
from schemas import AudioParams, SessionStarted, TranscriptFinal, new_id
from tests.api_harness import Api
from tests.conftest import wait_for
from tests.fixtures.audio import pcm, silence

pytestmark = pytest.mark.stack("asr")

TEXTS = {clip.name: clip.text for clip in clips("zh")}
PCM_16K = AudioParams(format="pcm16", sample_rate=16000, channels=1, frame_duration=20)
FRAME = 16000 * 2 * 20 // 1000


def clip(name: str) -> bytes:
    (found,) = clips("zh", [name])
    return found.pcm


async def assistant(api: Api, headers: dict[str, str], **settings: str) -> str:
    r = await api.client.post("/api/v1/assistants", headers=headers, json={"name": "A", **settings})
    assert r.status_code == 201, r.text
    return str(r.json()["assistant_id"])


async def speak(bus: Bus, assistant_id: str | None, audio: list[bytes],
                language: str | None = None) -> str:
    """A session of the assistant hearing `audio`, one utterance after another."""
    started = SessionStarted(session_id=new_id(), transport="test", audio_in=PCM_16K,
                             assistant_id=assistant_id, language=language)
    await bus.publish(started)
    # A second of silence at real time: the ASR worker claims the session meanwhile (audio
    # before that claim is not heard, as for any client).
    data = silence(1000) + b"".join(a + silence(700) for a in audio)
    began = time.monotonic()
    for n, i in enumerate(range(0, len(data), FRAME)):
        await bus.publish_core(audio_in(started.session_id), data[i:i + FRAME])
        # The silence at real time, the speech 4× faster (the VAD keeps audio time).
        due = (n + 1) * 0.02 if n < 50 else 1.0 + (n - 49) * 0.005
        await asyncio.sleep(max(0.0, began + due - time.monotonic()))
    await bus.flush()
    return started.session_id


def finals(events: list) -> list[TranscriptFinal]:
    return [e for e in events if isinstance(e, TranscriptFinal)]


async def test_a_mandarin_assistant_is_heard_by_whisper(stack: Api) -> None:
    headers = await stack.user()
    mandarin = await assistant(stack, headers, language="zh")
    r = await stack.client.get(f"/api/v1/assistants/{mandarin}", headers=headers)
    assert r.json()["language"] == "zh"
    bus = stack.services.bus
    sid = await speak(bus, mandarin, [clip(name) for name in TEXTS])
    events = await wait_for(bus, sid, lambda ev: len(finals(ev)) >= len(TEXTS), timeout=180)
    heard = finals(events)
    assert {(f.provider, f.language) for f in heard} == {("whisper", "zh")}
    pairs = [(text, f.text) for text, f in zip(TEXTS.values(), heard, strict=True)]
    assert error_rate(pairs, "zh") <= 0.15, [f.text for f in heard]


async def test_an_english_assistant_is_still_heard_by_moonshine(stack: Api) -> None:
    headers = await stack.user()
    english = await assistant(stack, headers)
    r = await stack.client.get(f"/api/v1/assistants/{english}", headers=headers)
    assert r.json()["language"] == "en"
    bus = stack.services.bus
    sid = await speak(bus, english, [pcm("kitchen_lights")])
    (final,) = finals(await wait_for(bus, sid, lambda ev: bool(finals(ev)), timeout=60))
    assert (final.provider, final.language) == ("moonshine", "en")
    assert "light" in final.text.lower()


async def test_auto_hears_each_session_in_its_first_utterance_s_language(stack: Api) -> None:
    headers = await stack.user()
    either = await assistant(stack, headers, language="auto")
    bus = stack.services.bus
    mandarin = await speak(bus, either, [clip("time"), clip("music")])
    english = await speak(bus, either, [pcm("kitchen_lights")])
    heard = finals(await wait_for(bus, mandarin, lambda ev: len(finals(ev)) >= 2, timeout=120))
    assert [(f.provider, f.language) for f in heard] == [("whisper", "zh")] * 2
    assert cer(TEXTS["time"], heard[0].text) <= 0.15 and cer(TEXTS["music"], heard[1].text) <= 0.15
    (final,) = finals(await wait_for(bus, english, lambda ev: bool(finals(ev)), timeout=60))
    assert (final.provider, final.language) == ("moonshine", "en")
    assert "light" in final.text.lower()


async def test_a_client_s_language_hint_is_heeded_on_the_default_assistant(stack: Api) -> None:
    """A device saying `"language": "zh-CN"` in its hello is heard in Mandarin when it talks
    to the system's default assistant; an owned English assistant keeps its own language."""
    hello = protocol.parse_hello({"type": "hello", "language": "zh-CN"}, None)
    assert hello.language == "zh"
    assert protocol.parse_hello({"type": "hello", "language": "fr-FR"}, None).language is None
    headers = await stack.user()
    english = await assistant(stack, headers)
    bus = stack.services.bus
    anonymous = await speak(bus, None, [clip("time")], language=hello.language)
    owned = await speak(bus, english, [pcm("kitchen_lights")], language=hello.language)
    (final,) = finals(await wait_for(bus, anonymous, lambda ev: bool(finals(ev)), timeout=120))
    assert (final.provider, final.language) == ("whisper", "zh")
    assert cer(TEXTS["time"], final.text) <= 0.15
    (final,) = finals(await wait_for(bus, owned, lambda ev: bool(finals(ev)), timeout=60))
    assert final.provider == "moonshine"


async def test_an_unknown_language_is_refused(stack: Api) -> None:
    headers = await stack.user()
    r = await stack.client.post("/api/v1/assistants", headers=headers,
                                json={"name": "A", "language": "fr"})
    assert r.status_code == 422, r.text
