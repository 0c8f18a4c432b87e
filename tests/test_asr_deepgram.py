"""The Deepgram engine through the real deepgram-sdk, against devservers/deepgram.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from actors.asr.engine import make_engine
from actors.asr.engine_deepgram import DeepgramEngine
from actors.asr.settings import AsrSettings, DeepgramSettings
from actors.assistant import AssistantProfile
from bus.client import Bus
from devservers.deepgram import DeepgramServer
from schemas import Error, SpeechStopped, TranscriptFinal
from settings.config import Config, ConfigError, parse
from tests import test_asr_actor
from tests.conftest import wait_for
from tests.fixtures.audio import META, pcm
from tests.test_asr_actor import Start, events_of, frames, of, open_session, stream

start_asr = test_asr_actor.start_asr  # the same fixture: an ASR actor with a durable of its own
TEXT = "Turn on the kitchen lights please."


@pytest.fixture
def deepgram() -> Iterator[DeepgramServer]:
    server = DeepgramServer(api_key="test-key").start()
    server.default_text = TEXT
    yield server
    server.stop()


def test_the_engine_is_chosen_by_the_key_and_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    monkeypatch.delenv("VAGENT_SECRETS_FILE", raising=False)
    assert AsrSettings.from_config(parse("").asr).engine == "moonshine"
    monkeypatch.setenv("DEEPGRAM_API_KEY", "k")
    settings = AsrSettings.from_config(parse('[asr.deepgram]\nurl = "ws://127.0.0.1:9/"\n').asr)
    assert settings.engine == "deepgram" and settings.deepgram is not None
    assert settings.deepgram.url == "ws://127.0.0.1:9"
    assert isinstance(make_engine(settings), DeepgramEngine)
    local = parse('[asr]\nengine = "moonshine"\n').asr  # a key, but the local model wanted
    assert AsrSettings.from_config(local).engine == "moonshine"
    monkeypatch.delenv("DEEPGRAM_API_KEY")
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
        AsrSettings.from_config(parse('[asr]\nengine = "deepgram"\n').asr)


def deepgram_at(server: DeepgramServer, engine: str = "auto") -> Config:
    return parse(f'[asr]\nengine = "{engine}"\n[asr.deepgram]\nurl = "{server.url}"\n')


async def test_the_sdk_streams_audio_and_gets_partials_and_a_final(deepgram: DeepgramServer
                                                                   ) -> None:
    engine = DeepgramEngine(DeepgramSettings(api_key="test-key", url=deepgram.url,
                                             model="nova-3", language="en"))
    partials: list[str] = []
    recognition = await engine.start(partials.append)
    audio = pcm("kitchen_lights")
    for i in range(0, len(audio), 1920):
        recognition.feed(audio[i:i + 1920])
        await asyncio.sleep(0)
    assert await recognition.finish() == TEXT
    assert partials[-1] == TEXT and len(partials) > 1 and partials[0] != TEXT
    (conn,) = deepgram.connections
    assert conn.path == "/v1/listen"
    assert conn.query == {"model": "nova-3", "language": "en", "encoding": "linear16",
                          "sample_rate": "16000", "channels": "1", "interim_results": "true",
                          "punctuate": "true"}
    assert conn.audio_bytes == len(audio)
    assert conn.control == ["CloseStream"]
    assert [r["is_final"] for r in conn.results][-1] is True


async def test_a_quiet_stretch_sends_keepalive(deepgram: DeepgramServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("actors.asr.engine_deepgram.KEEPALIVE_S", 0.1)
    engine = DeepgramEngine(DeepgramSettings(api_key="test-key", url=deepgram.url))
    recognition = await engine.start(lambda text: None)
    recognition.feed(pcm("what_time")[:32000])
    await asyncio.sleep(0.35)
    recognition.feed(pcm("what_time")[32000:])
    assert await recognition.finish() == TEXT
    assert deepgram.connections[0].control.count("KeepAlive") >= 2


async def test_a_wrong_key_is_an_asr_error(deepgram: DeepgramServer) -> None:
    engine = DeepgramEngine(DeepgramSettings(api_key="wrong", url=deepgram.url))
    recognition = await engine.start(lambda text: None)
    recognition.feed(pcm("what_time")[:3200])
    with pytest.raises(Exception, match="HTTP 401"):
        await recognition.finish()


async def test_the_actor_transcribes_with_deepgram(bus: Bus, start_asr: Start,
                                                   deepgram: DeepgramServer) -> None:
    asr = await start_asr(deepgram_at(deepgram), DEEPGRAM_API_KEY="test-key")
    assert asr.engine.provider == "deepgram"
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("kitchen_lights"), speed=10.0)
    events = await wait_for(bus, started.session_id, lambda ev: bool(of(TranscriptFinal, ev)))
    (final,) = of(TranscriptFinal, events)
    (stopped,) = of(SpeechStopped, events)
    assert (final.text, final.provider, final.language) == (TEXT, "deepgram", "en")
    assert final.audio == stopped.audio
    # Deepgram heard the utterance as stored: pre-roll + speech + silence hold.
    assert stopped.audio is not None
    assert abs(deepgram.connections[0].audio_bytes // 32 - stopped.audio.duration_ms) <= 1
    assert abs(stopped.audio_ms - META["kitchen_lights"]["speech_end_ms"]) <= 150


async def test_deepgram_failing_is_an_error_event_not_a_crash(bus: Bus, start_asr: Start,
                                                              deepgram: DeepgramServer) -> None:
    asr = await start_asr(deepgram_at(deepgram), DEEPGRAM_API_KEY="wrong")
    started = await open_session(bus, asr)
    sid = started.session_id
    await stream(bus, sid, frames("what_time"), speed=10.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(Error, ev)))
    (error,) = of(Error, events)
    assert error.code == "asr_failed" and "401" in error.message and error.retryable
    assert of(SpeechStopped, events) and not of(TranscriptFinal, events)
    # The session goes on: the next utterance is tried again.
    deepgram.api_key = "wrong"
    await stream(bus, sid, frames("what_time"), speed=10.0)
    events = await wait_for(bus, sid, lambda ev: len(of(TranscriptFinal, ev)) == 1)
    assert of(TranscriptFinal, events)[0].text == TEXT
    assert len(of(Error, await events_of(bus, sid))) == 1


async def test_the_assistant_s_asr_choice_is_honoured(bus: Bus, start_asr: Start,
                                                      deepgram: DeepgramServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """On a worker whose default is moonshine, a session of an assistant that names deepgram
    is heard by deepgram; one whose choice cannot be loaded, and one of no assistant, by
    moonshine."""
    asr = await start_asr(deepgram_at(deepgram, "moonshine"), DEEPGRAM_API_KEY="test-key")
    assert asr.engine.provider == "moonshine"
    profiles = {"cloud": AssistantProfile(assistant_id="cloud", asr="deepgram"),
                "odd": AssistantProfile(assistant_id="odd", asr="no_such_engine")}

    async def get(assistant_id: str) -> AssistantProfile | None:
        return profiles.get(assistant_id)

    monkeypatch.setattr(asr.assistants, "get", get)
    sessions = [await open_session(bus, asr, assistant_id=a) for a in ("cloud", "odd", None)]
    await asyncio.gather(*(stream(bus, s.session_id, frames("kitchen_lights"), speed=10.0)
                           for s in sessions))
    finals = []
    for started in sessions:
        events = await wait_for(bus, started.session_id, lambda ev: bool(of(TranscriptFinal, ev)))
        (final,) = of(TranscriptFinal, events)
        finals.append(final)
    assert [f.provider for f in finals] == ["deepgram", "moonshine", "moonshine"]
    assert finals[0].text == TEXT and len(deepgram.connections) == 1
    assert list(asr.engines) == ["deepgram"]
