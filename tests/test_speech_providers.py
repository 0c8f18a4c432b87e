"""Speech providers by URL: `[[asr.providers]]` and `[[tts.providers]]` chains through the
real `openai` SDK against tests/openai_speech_server.py (OpenAI's audio API)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.asr.engine import AsrError, make_engine
from actors.asr.engine_openai import OpenAIEngine
from actors.asr.settings import AsrSettings
from actors.assistant import AssistantProfile
from actors.fallback import ProviderFailed, chain_of
from actors.tts.openai_voice import OpenAITts, SpeechFailed
from actors.tts.providers import open_provider, provider_name
from bus.client import Bus
from bus.server import EmbeddedServer
from projections.runtime import ProjectionService
from schemas import AssistantCreated, Error, TranscriptFinal, new_id
from settings.config import Config, ConfigError, parse
from tests import test_asr_actor, test_tts
from tests.api_harness import api_config, serve_api
from tests.conftest import wait_for
from tests.fixtures.audio import pcm
from tests.openai_speech_server import OpenAISpeechServer
from tests.test_asr_actor import Start, frames, of, open_session, stream
from tests.test_tts import StartTts, catch_frames, sentence, voices_heard

start_asr = test_asr_actor.start_asr
start_tts = test_tts.start_tts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def servers() -> Iterator[tuple[OpenAISpeechServer, OpenAISpeechServer]]:
    a, b = OpenAISpeechServer().start(), OpenAISpeechServer().start()
    b.transcript = "把客厅的灯打开"
    yield a, b
    a.stop()
    b.stop()


def asr_config(a: OpenAISpeechServer, b: OpenAISpeechServer, extra: str = "") -> Config:
    return parse(f'''
[[asr.providers]]
name = "a"
base_url = "{a.base_url}"
model = "whisper-1"
api_key_env = "A_SPEECH_KEY"
[[asr.providers]]
name = "b"
base_url = "{b.base_url}"
model = "FunAudioLLM/SenseVoiceSmall"
{extra}''')


def tts_config(a: OpenAISpeechServer, b: OpenAISpeechServer, extra: str = "") -> Config:
    return parse(f'''
[[tts.providers]]
name = "a"
base_url = "{a.base_url}"
model = "gpt-4o-mini-tts"
voice = "alloy"
api_key_env = "A_SPEECH_KEY"
[[tts.providers]]
name = "b"
base_url = "{b.base_url}"
model = "FunAudioLLM/CosyVoice2-0.5B"
voice = "FunAudioLLM/CosyVoice2-0.5B:alex"
response_format = "pcm"
sample_rate = {b.sample_rate}
{extra}''')


def test_a_configured_chain_is_the_default_and_names_its_providers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    chain = parse('[[asr.providers]]\nname = "x"\nbase_url = "http://h/v1"\nmodel = "m"\n'
                  '[[tts.providers]]\nname = "y"\nbase_url = "http://h/v1"\nmodel = "m"\n'
                  'voice = "v"\n')
    settings = AsrSettings.from_config(chain.asr)
    assert settings.engine == "openai" and settings.chain_member("x")
    assert isinstance(make_engine(settings), OpenAIEngine)
    assert provider_name(chain.tts) == "openai"
    assert AsrSettings.from_config(parse('[asr]\nengine = "moonshine"\n').asr).engine == "moonshine"
    with pytest.raises(ConfigError, match=r"\[\[asr.providers\]\]"):
        AsrSettings.from_config(parse('[asr]\nengine = "openai"\n').asr)
    with pytest.raises(ConfigError, match="response_format"):
        parse('[[tts.providers]]\nname = "y"\nbase_url = "u"\nmodel = "m"\nvoice = "v"\n'
              'response_format = "mp3"\n')


# --- ASR ------------------------------------------------------------------------------


async def test_an_utterance_falls_to_the_next_provider_as_a_multipart_wav(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = servers
    monkeypatch.setenv("A_SPEECH_KEY", "sk-a")
    a.fail_status = 503
    engine = make_engine(AsrSettings.from_config(asr_config(a, b).asr))
    assert isinstance(engine, OpenAIEngine) and engine.provider == "openai"
    session = engine.speaking("zh")
    audio = pcm("kitchen_lights")
    recognition = await session.start(lambda _text: None)
    for at in range(0, len(audio), 1920):
        recognition.feed(audio[at:at + 1920])
    assert await recognition.finish() == "把客厅的灯打开"
    assert session.provider == "b" and session.language == "zh"
    assert engine.provider == "openai"  # the shared engine is no session's
    for server, model in ((a, "whisper-1"), (b, "FunAudioLLM/SenseVoiceSmall")):
        (request,) = server.transcriptions
        assert request["content_type"] == "multipart/form-data"
        assert (request["model"], request["language"], request["filename"]) == (model, "zh", "utterance.wav")
        assert request["wav"] == {"rate": 16000, "channels": 1, "frames": len(audio) // 2}
    assert a.authorizations == ["Bearer sk-a"]
    # A session whose language is not known sends none: the server tells it.
    b.transcriptions.clear()
    unknown = engine.speaking(None)
    recognition = await unknown.start(lambda _text: None)
    recognition.feed(audio)
    await recognition.finish()
    assert "language" not in b.transcriptions[0]
    assert unknown.language == "zh"  # the transcript's, told by its script
    await engine.close()


async def test_the_asr_breaker_skips_a_failing_provider_until_its_cooldown(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    a, b = servers
    a.fail_status = 500
    clock = Clock()
    settings = AsrSettings.from_config(asr_config(a, b, "[asr.breaker]\nfailures = 2\ncooldown = 30\n").asr)
    engine = OpenAIEngine.of(settings.providers, settings.breaker, clock)
    session = engine.speaking("en")

    async def hear() -> str:
        recognition = await session.start(lambda _text: None)
        recognition.feed(pcm("what_time"))
        return await recognition.finish()

    for _ in range(4):
        assert await hear() == "把客厅的灯打开"
    assert (len(a.transcriptions), len(b.transcriptions)) == (2, 4)  # open after two
    a.fail_status = None
    clock.now += 30  # the cooldown is over: one probe, and it succeeds
    assert await hear() == "turn on the kitchen lights" and session.provider == "a"
    assert len(a.transcriptions) == 3
    b.fail_status = a.fail_status = 500
    with pytest.raises(AsrError, match=r"a \(http://127\.0\.0\.1:\d+/v1\): HTTP 500.*b \(") as caught:
        await hear()
    assert isinstance(caught.value.__cause__, ProviderFailed)
    await engine.close()


async def test_an_assistant_picks_its_asr_provider_and_its_language_is_sent(
        bus: Bus, start_asr: Start, servers: tuple[OpenAISpeechServer, OpenAISpeechServer],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain is the worker's default: a session of an assistant that picks `b` and speaks
    Mandarin is heard by `b` first and told `zh`; a session of no assistant by `a`, with no
    language; when every provider fails the session gets `asr_failed` and goes on."""
    a, b = servers
    asr = await start_asr(asr_config(a, b))
    assert asr.engine.provider == "openai"
    profiles = {"mandarin": AssistantProfile(assistant_id="mandarin", asr="b", language="zh")}

    async def get(assistant_id: str) -> AssistantProfile | None:
        return profiles.get(assistant_id)

    monkeypatch.setattr(asr.assistants, "get", get)
    sessions = [await open_session(bus, asr, assistant_id=aid) for aid in ("mandarin", None)]
    await asyncio.gather(*(stream(bus, s.session_id, frames("kitchen_lights"), speed=10.0)
                           for s in sessions))
    finals = []
    for started in sessions:
        events = await wait_for(bus, started.session_id, lambda ev: bool(of(TranscriptFinal, ev)))
        finals.append(of(TranscriptFinal, events)[0])
    assert [(f.provider, f.language, f.text) for f in finals] == [
        ("b", "zh", "把客厅的灯打开"), ("a", "en", "turn on the kitchen lights")]
    assert [r.get("language") for r in b.transcriptions] == ["zh"]
    assert [r.get("language") for r in a.transcriptions] == [None]

    a.fail_status = b.fail_status = 502
    sid = sessions[1].session_id
    await stream(bus, sid, frames("what_time"), speed=10.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(Error, ev)))
    (error,) = of(Error, events)
    assert error.code == "asr_failed" and error.retryable
    assert "HTTP 502" in error.message and "a (" in error.message and "b (" in error.message


# --- TTS ------------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["pcm", "wav"])
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
async def test_speech_is_read_streamed_or_whole_as_pcm_or_wav(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer], response_format: str,
        streamed: bool) -> None:
    a, b = servers
    a.streamed = streamed
    config = tts_config(a, b, "")
    config.tts.providers[0].response_format = response_format  # type: ignore[assignment]
    voice = await open_provider(config.tts)
    assert isinstance(voice, OpenAITts) and (voice.name, voice.voice, voice.sample_rate) == (
        "openai", "alloy", 24000)
    text = "Hello from a voice by URL."
    chunks = [chunk async for chunk in voice.stream(text)]
    assert all(len(c) % 2 == 0 and c for c in chunks)
    assert b"".join(chunks) == a.audio_of(text)  # every sample, split samples and header aside
    if streamed:
        assert len(chunks) > 1  # played as it came
    assert a.speeches == [{"model": "gpt-4o-mini-tts", "voice": "alloy", "input": text,
                           "response_format": response_format}]
    await voice.close()


async def test_a_sentence_falls_to_the_next_speaker_at_the_chain_s_rate(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    """`a` fails (then is slow to start), `b` speaks at 44.1 kHz, resampled to the chain's
    24 kHz; after `failures` the breaker skips `a` without asking it."""
    a, b = servers
    b.sample_rate = 44100
    voice = await open_provider(tts_config(
        a, b, "[tts.breaker]\nfailures = 2\n").tts)
    assert voice.sample_rate == 24000
    a.fail_status = 500
    text = "Twenty characters!!!"  # 20 characters: 0.4 s
    audio = b"".join([chunk async for chunk in voice.stream(text)])
    assert len(audio) // 2 == pytest.approx(0.4 * 24000, abs=100)
    assert b.speeches[0]["voice"] == "FunAudioLLM/CosyVoice2-0.5B:alex"
    a.fail_status, a.delay = None, 5.0  # no audio within first_audio_timeout: the next speaks
    assert isinstance(voice, OpenAITts)
    voice.members[0].config.first_audio_timeout = 0.3
    assert b"".join([chunk async for chunk in voice.stream(text)])
    assert (len(a.speeches), len(b.speeches)) == (2, 2)
    a.delay = 0.0
    assert b"".join([chunk async for chunk in voice.stream(text)])  # the breaker is open
    assert (len(a.speeches), len(b.speeches)) == (2, 3)
    b.fail_status = 503
    with pytest.raises(ProviderFailed, match=r"a: circuit open; b \(.*\): HTTP 503"):
        async for _ in voice.stream(text):
            pass
    await voice.close()


async def test_an_assistant_picks_its_tts_provider_and_voice(
        bus: Bus, start_tts: StartTts, data_dir: Path,
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    a, b = servers
    projections = ProjectionService(bus, data_dir)
    await projections.start()
    try:
        aid = new_id()
        await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", tts="b", voice="anna"))
        tts = await start_tts(tts_config(a, b))
        assert tts.provider.name == "openai"
        assert await voices_heard(bus, aid) == ("anna", "alloy")
        assert [s["voice"] for s in b.speeches] == ["anna"]
        assert [s["voice"] for s in a.speeches] == ["alloy"]
        # The assistant's pick is the worker's chain, its breakers shared, not a second chain.
        picked = tts.voices[("b", "anna")].provider
        assert isinstance(picked, OpenAITts) and isinstance(tts.provider, OpenAITts)
        assert picked.members is tts.provider.members and picked.prefer == "b"

        a.fail_status = b.fail_status = 500  # the whole chain fails: the turn hears why
        sid, turn = "t" + new_id(), new_id()
        await catch_frames(bus, sid)
        await bus.publish(sentence(sid, turn, "Nobody says this."))
        events = await wait_for(bus, sid, lambda ev: any(isinstance(e, Error) for e in ev))
        error = next(e for e in events if isinstance(e, Error))
        assert error.code == "tts_failed" and "HTTP 500" in error.message
    finally:
        await projections.stop()


async def test_the_api_offers_the_chains_providers_as_an_assistant_s_choice(
        module_nats: EmbeddedServer, tmp_path: Path,
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    config = api_config()
    chains = tts_config(*servers)
    config.asr, config.tts = asr_config(*servers).asr, chains.tts
    async with serve_api(module_nats.url, tmp_path, config) as api:
        h = await api.user()
        r = await api.client.post("/api/v1/assistants", headers=h,
                                  json={"name": "x", "asr": "b", "tts": "a", "voice": "nova"})
        assert r.status_code == 201, r.text
        assert (r.json()["asr"], r.json()["tts"]) == ("b", "a")
        r = await api.client.post("/api/v1/assistants", headers=h, json={"name": "y", "asr": "c"})
        assert r.status_code == 422, r.text
        assert {"a", "b", "openai", "moonshine"} <= set(r.json()["error"]["details"]["known"])


async def test_a_probe_cut_short_lets_the_next_sentence_probe(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    """A half-open breaker's probe that is cancelled (the turn was interrupted) gives no
    verdict: the provider is not left waiting for a probe that never ends."""
    a, b = servers
    clock = Clock()
    config = tts_config(a, b, "[tts.breaker]\nfailures = 1\ncooldown = 10\n").tts
    voice = OpenAITts(chain_of(config.providers, config.breaker, clock))
    a.fail_status = 500
    assert b"".join([c async for c in voice.stream("one")])  # a fails: its breaker opens
    a.fail_status, a.delay = None, 5.0
    clock.now += 10
    probe = asyncio.create_task(_drain(voice, "two"))
    while len(a.speeches) < 2:  # the probe is at a
        await asyncio.sleep(0.01)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    a.delay = 0.0
    assert await _drain(voice, "three") == a.audio_of("three")
    assert [s["input"] for s in a.speeches] == ["one", "two", "three"]  # probed again: it answers
    assert [s["input"] for s in b.speeches] == ["one"]
    await voice.close()


async def _drain(voice: OpenAITts, text: str) -> bytes:
    return b"".join([chunk async for chunk in voice.stream(text)])


async def test_a_body_cut_before_any_audio_falls_to_the_next_and_after_it_ends_the_sentence(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    a, b = servers
    voice = OpenAITts(chain_of(*(lambda t: (t.providers, t.breaker))(tts_config(a, b).tts)))
    text = "A sentence long enough for several chunks."
    a.cut_after = 0  # 200, then the connection drops before any audio
    assert await _drain(voice, text) == b.audio_of(text)
    assert [s["input"] for s in b.speeches] == [text]
    a.cut_after = 2000  # some audio played: the next provider would say it again
    with pytest.raises(SpeechFailed, match=r"a \(.*\) stopped speaking"):
        await _drain(voice, text)
    assert len(b.speeches) == 1
    assert len(voice.members[0].breaker.failures) == 2  # both counted against `a`
    await voice.close()


async def test_a_transcription_slower_than_its_timeout_falls_to_the_next(
        servers: tuple[OpenAISpeechServer, OpenAISpeechServer]) -> None:
    a, b = servers
    a.delay = 5.0
    settings = AsrSettings.from_config(asr_config(a, b).asr)
    settings.providers[0].timeout = 0.3
    engine = OpenAIEngine.of(settings.providers, settings.breaker)
    session = engine.speaking("en")
    recognition = await session.start(lambda _text: None)
    recognition.feed(pcm("what_time"))
    assert await recognition.finish() == "把客厅的灯打开" and session.provider == "b"
    assert len(a.transcriptions) == 1
    assert len(engine.chain.members[0].breaker.failures) == 1
    await engine.close()
