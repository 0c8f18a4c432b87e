"""The tts actor's parts without NATS: the encoder, the quick-reply cache, streamed
synthesis, provider choice, ElevenLabs through the real SDK, and piper's isolation."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from elevenlabs.core.api_error import ApiError

from actors.tts.cache import AudioCache, CachedAudio
from actors.tts.elevenlabs_voice import ElevenLabsTts
from actors.tts.providers import open_provider, provider_name
from actors.tts.synth import Slots, Synthesis, SynthesisFailed
from audio.encode import AudioEncoder, check_params
from devservers.elevenlabs import ElevenLabsServer, tone
from schemas import AudioParams
from settings.config import ConfigError, TtsSettings
from tests.test_tts import decode_opus

ROOT = Path(__file__).resolve().parents[1]


def test_opus_frames_decode_to_whole_padded_segments() -> None:
    encoder = AudioEncoder()  # opus, 24 kHz mono, 60 ms: the xiaozhi downlink default
    packets = []
    for seconds in (1.0, 0.5):  # two sentences of piper's 22 050 Hz
        pcm = tone(seconds, 22050)
        packets += encoder.encode(pcm[:7000], 22050) + encoder.encode(pcm[7000:], 22050)
        packets += encoder.end_segment()
    assert len(packets) == 17 + 9  # 1.0 s → 16.7 frames, 0.5 s → 8.3 frames, each padded
    samples = decode_opus(packets)
    assert len(samples) == len(packets) * 2880  # 60 ms at the decoder's 48 kHz
    assert np.sqrt(np.mean(samples[:48000] ** 2)) > 0.1


def test_webrtc_style_opus_and_pcm16_frames() -> None:
    stereo = AudioEncoder(AudioParams(format="opus", sample_rate=48000, channels=2, frame_duration=20))
    packets = stereo.encode(tone(0.2, 16000), 16000) + stereo.end_segment()
    assert len(packets) == 10 and len(decode_opus(packets)) == 10 * 960
    raw = AudioEncoder(AudioParams(format="pcm16", sample_rate=16000, channels=1, frame_duration=20))
    frames = raw.encode(tone(0.25, 16000), 16000) + raw.end_segment()  # same rate: no resampling
    assert [len(f) for f in frames] == [640] * 13
    assert b"".join(frames)[:8000] == tone(0.25, 16000)[:8000]
    assert frames[-1][-200:] == bytes(200)  # the padding is silence


def test_a_segment_whose_resampler_tail_spans_frames_ends_padded() -> None:
    # 80 266 bytes of 22 050 Hz: the resampler's flushed tail is over one 20 ms frame.
    raw = AudioEncoder(AudioParams(format="pcm16", sample_rate=16000, channels=1, frame_duration=20))
    frames = raw.encode(bytes(80_266), 22050) + raw.end_segment()
    assert {len(f) for f in frames} == {640}
    assert abs(len(frames) * 320 - 40_133 * 16000 / 22050) < 320  # all of it, within a frame


def test_impossible_audio_params_are_refused() -> None:
    for params in (AudioParams(format="opus", sample_rate=22050),
                   AudioParams(format="opus", sample_rate=24000, frame_duration=30),
                   AudioParams(format="pcm16", sample_rate=24000, channels=3),
                   AudioParams(format="pcm16", sample_rate=22050, frame_duration=15)):
        with pytest.raises(ValueError):
            check_params(params)
    check_params(AudioParams(format="pcm16", sample_rate=22050, frame_duration=20))


def test_the_cache_keeps_recent_audio_within_its_bytes() -> None:
    cache = AudioCache(max_bytes=4000)
    for name in "abcd":
        cache.put(("p", "v", name), CachedAudio(bytes(1000), 16000))
    assert cache.get(("p", "v", "a")) is not None  # now the most recent
    cache.put(("p", "v", "e"), CachedAudio(bytes(1000), 16000))
    assert cache.get(("p", "v", "b")) is None and cache.get(("p", "v", "a")) is not None
    assert cache.bytes == 4000 and len(cache) == 4
    cache.put(("p", "v", "huge"), CachedAudio(bytes(1001), 16000))  # over a quarter: not kept
    assert cache.get(("p", "v", "huge")) is None
    assert (cache.hits, cache.misses) == (2, 2)


async def test_a_synthesis_is_read_while_it_grows() -> None:
    synthesis = Synthesis(16000)
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in synthesis.read():
            got.append(chunk)

    reader = asyncio.create_task(read())
    for chunk in (b"\x01\x00", b"\x02\x00"):
        synthesis.feed(chunk)
        await asyncio.sleep(0)
    assert got == [b"\x01\x00", b"\x02\x00"] and not reader.done()
    synthesis.finish()
    await reader
    failed = Synthesis(16000)
    failed.feed(b"\x00\x00")
    failed.finish(RuntimeError("gone"))
    with pytest.raises(SynthesisFailed, match="gone"):
        async for _ in failed.read():
            pass


async def test_a_turns_first_sentence_is_synthesized_before_later_ones() -> None:
    slots, order = Slots(1), []

    async def run(name: str, priority: int) -> None:
        await slots.acquire(priority)
        order.append(name)
        await asyncio.sleep(0.01)
        slots.release()

    busy = asyncio.create_task(run("playing turn, sentence 0", 0))
    await asyncio.sleep(0)
    later = [asyncio.create_task(run(f"playing turn, sentence {i}", 1)) for i in (1, 2)]
    gone = asyncio.create_task(run("interrupted", 0))
    new = asyncio.create_task(run("new turn, sentence 0", 0))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(busy, *later, new, return_exceptions=True)
    assert order == ["playing turn, sentence 0", "new turn, sentence 0",
                     "playing turn, sentence 1", "playing turn, sentence 2"]
    assert slots.free == 1


def test_the_provider_is_chosen_by_key_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    monkeypatch.delenv("VAGENT_SECRETS_FILE", raising=False)
    assert provider_name(TtsSettings()) == "piper"
    monkeypatch.setenv("ELEVENLABS_API_KEY", "k")
    assert provider_name(TtsSettings()) == "elevenlabs"
    assert provider_name(TtsSettings(provider="piper")) == "piper"


async def test_provider_misconfiguration_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELEVENLABS_API_KEY", raising=False)
    monkeypatch.delenv("VAGENT_SECRETS_FILE", raising=False)
    with pytest.raises(ConfigError, match="unknown"):
        await open_provider(TtsSettings(), "espeak")
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY"):
        await open_provider(TtsSettings(), "elevenlabs")
    with pytest.raises(ConfigError, match="need a Piper voice file"):
        await open_provider(TtsSettings(voice="/nowhere/voice.onnx"), "piper")


@pytest.fixture
def elevenlabs() -> Iterator[ElevenLabsServer]:
    server = ElevenLabsServer(api_key="k1").start()
    yield server
    server.stop()


async def test_elevenlabs_streams_whole_samples(elevenlabs: ElevenLabsServer) -> None:
    voice = ElevenLabsTts("k1", voice="v", sample_rate=16000, base_url=elevenlabs.base_url)
    try:
        chunks = [c async for c in voice.stream("twenty-five characters...")]
        assert len(chunks) > 5 and all(len(c) % 2 == 0 for c in chunks)
        assert b"".join(chunks) == tone(1.0, 16000)
        assert elevenlabs.requests[-1]["output_format"] == "pcm_16000"
        bad = ElevenLabsTts("wrong", base_url=elevenlabs.base_url)
        with pytest.raises(ApiError) as failure:
            async for _ in bad.stream("hello"):
                pass
        assert failure.value.status_code == 401
        await bad.close()
    finally:
        await voice.close()


def test_only_the_piper_module_imports_piper() -> None:
    """piper-tts is GPL-3.0: in what vagent ships, it stays behind the provider interface,
    in one module (test-time tools may use it to make fixtures)."""
    importers = []
    for folder in ("actors", "bus", "schemas", "cli", "edge", "projections"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "piper" or n.startswith("piper.") or n == "actors.tts.piper_voice"
                       for n in names):
                    importers.append(path.relative_to(ROOT).as_posix())
    # … and that module is loaded by name only (actors.tts.providers), never imported.
    assert importers == ["actors/tts/piper_voice.py"]
