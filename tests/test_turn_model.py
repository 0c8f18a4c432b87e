"""The turn model and the pause rules around it, on the committed clips (no NATS)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime.datasets
import pytest

from actors.asr.endpoint import Ender, ModelEnd, SilenceEnd
from actors.asr.turn_model import SAMPLES, Features, TurnModel, last_window
from actors.asr.vad import Segmenter, SpeechStart, SpeechStop, VadSettings
from audio.decode import Decoder
from settings.config import ConfigError, parse
from tests.fixtures.audio import HERE, META, opus_packets, pcm, silence

TURNS = json.loads((HERE / "turns" / "clips.json").read_text())
PAUSED = TURNS["flight_paused"]  # "I want to book a flight to … London next Friday."


@pytest.fixture(scope="module")
def model() -> TurnModel:
    return TurnModel()


def paused() -> bytes:
    return pcm("turns/flight_paused")


def ms(audio: bytes, until_ms: int) -> bytes:
    return audio[:until_ms * 32]


def boundaries(audio: bytes, ender: Ender | None) -> list[SpeechStart | SpeechStop]:
    segmenter = Segmenter(ender=ender)
    out = []
    for i in range(0, len(audio), 1920):
        out += [b for b in segmenter.feed(audio[i:i + 1920]) if isinstance(b, SpeechStart | SpeechStop)]
    return out


def model_end(model: object, hold: int = 200, max_wait: int = 2000) -> ModelEnd:
    return ModelEnd(model, complete_hold_ms=hold, incomplete_max_ms=max_wait,  # type: ignore[arg-type]
                    threshold=0.5, fallback=SilenceEnd(VadSettings().silence_ms))


def reference_features(window: np.ndarray) -> np.ndarray:
    """transformers' WhisperFeatureExtractor (8 s chunks, do_normalize) in float64, written
    out from its definition: what the model was trained on."""
    x = window.astype(np.float64)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x, (200, 200), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    power = np.abs(np.fft.rfft(frames * np.hanning(401)[:-1], axis=-1)) ** 2  # (801, 201)

    def mel(f: np.ndarray) -> np.ndarray:  # Slaney
        return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) * 27 / np.log(6.4))

    def hz(m: np.ndarray) -> np.ndarray:
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = hz(np.linspace(mel(np.array(0.0)), mel(np.array(8000.0)), 82))
    bins = np.linspace(0, 8000, 201)
    slopes = edges[None, :] - bins[:, None]
    width = np.diff(edges)
    filters = np.maximum(0, np.minimum(-slopes[:, :-2] / width[:-1], slopes[:, 2:] / width[1:]))
    filters *= 2 / (edges[2:] - edges[:-2])
    log_spec = np.log10(np.maximum(1e-10, filters.T @ power.T))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8)
    return (log_spec + 4) / 4


def test_the_features_are_whispers_of_the_last_8_s_padded_at_the_start() -> None:
    audio = pcm("kitchen_lights")
    window = last_window(audio)
    assert window.shape == (SAMPLES,) and not window[:SAMPLES - len(audio) // 2].any()
    features = Features()(window)
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert np.abs(features - reference_features(window)).max() < 1e-4
    long = pcm("weather_paris") * 3  # over 8 s: its end is kept
    assert np.array_equal(last_window(long), last_window(long[-SAMPLES * 2:]))


def test_a_complete_sentence_is_complete_and_one_that_trails_off_is_not(model: TurnModel) -> None:
    meta = META["kitchen_lights"]  # "Turn on the kitchen lights please."
    complete = model.complete(ms(pcm("kitchen_lights"), meta["speech_end_ms"] + 200))
    trailing = model.complete(ms(paused(), PAUSED["pause_start_ms"] + 200))  # "…a flight to"
    assert complete > 0.8 and trailing < 0.2, (complete, trailing)
    assert model.calls == 2 and model.cpu_s > 0


def test_a_sentence_paused_where_it_cannot_end_stays_one_utterance(model: TurnModel) -> None:
    audio = paused()
    assert 700 <= PAUSED["pause_ms"] <= 900
    by_silence = boundaries(audio, None)
    assert [type(b) for b in by_silence] == [SpeechStart, SpeechStop] * 2  # cut at the pause
    assert all(isinstance(b, SpeechStart) or b.end.by == "silence" for b in by_silence)
    for heard in (audio, opus_roundtrip(audio)):
        start, stop = boundaries(heard, model_end(model))
        assert isinstance(start, SpeechStart) and isinstance(stop, SpeechStop)
        assert abs(stop.stop_ms - PAUSED["speech_end_ms"]) < 150
        # The pause was judged incomplete; the end is the model's, or its longest wait.
        assert stop.end.by in ("model", "max_wait") and stop.end.probability is not None


def test_a_complete_sentence_ends_after_the_short_hold(model: TurnModel) -> None:
    meta = META["kitchen_lights"]
    _, stop = boundaries(pcm("kitchen_lights"), model_end(model))
    assert isinstance(stop, SpeechStop)
    assert stop.end.by == "model" and stop.end.probability is not None and stop.end.probability >= 0.5
    assert 200 <= stop.end.silence_ms < 300  # not the 400 ms silence alone needs
    (silent,) = [b for b in boundaries(pcm("kitchen_lights"), None) if isinstance(b, SpeechStop)]
    assert silent.end.by == "silence" and silent.end.silence_ms >= 400
    assert abs(stop.stop_ms - meta["speech_end_ms"]) < 150 and stop.stop_ms == silent.stop_ms


def test_listening_to_silence_or_noise_never_asks_the_model(model: TurnModel) -> None:
    before = model.calls
    assert boundaries(silence(5000) + pcm("noise") + silence(3000), model_end(model)) == []
    assert model.calls == before  # only a pause after speech is judged
    boundaries(silence(1000) + pcm("kitchen_lights"), model_end(model))
    assert model.calls == before + 1


def test_an_utterance_judged_incomplete_ends_at_the_longest_wait(model: TurnModel) -> None:
    head = ms(paused(), PAUSED["pause_start_ms"] + 100) + silence(2500)
    _, stop = boundaries(head, model_end(model, max_wait=1500))
    assert isinstance(stop, SpeechStop) and stop.end.by == "max_wait"
    assert stop.end.probability is not None and stop.end.probability < 0.5
    assert 1500 <= stop.end.silence_ms < 1540


def test_a_failing_model_falls_back_to_silence(caplog: pytest.LogCaptureFixture) -> None:
    # A real model of another shape: loading works, every decision fails.
    wrong = TurnModel(onnxruntime.datasets.get_example("sigmoid.onnx"))  # type: ignore[arg-type]
    ender = model_end(wrong)
    out = boundaries(paused(), ender)
    assert ender.failed and "turn model failed" in caplog.text
    assert [b.end.by for b in out if isinstance(b, SpeechStop)] == ["silence", "silence"]


def test_manual_and_too_long_utterances_say_so() -> None:
    segmenter = Segmenter(VadSettings(max_utterance_ms=1000))
    stop = next(b for b in segmenter.feed(pcm("weather_paris")) if isinstance(b, SpeechStop))
    assert stop.end.by == "max_length" and stop.forced
    segmenter = Segmenter()
    segmenter.manual = True
    segmenter.feed(pcm("what_time"))
    (stop,) = segmenter.end()
    assert isinstance(stop, SpeechStop) and stop.end.by == "manual" and stop.forced
    assert stop.end.silence_ms > 1000  # the clip's trailing silence, heard before the release


def opus_roundtrip(audio: bytes) -> bytes:
    decoder = Decoder("opus", 16000)
    return b"".join(decoder.decode(p) for p in opus_packets(audio)) + decoder.flush()


@pytest.mark.parametrize(("toml", "error"), [
    ("complete_hold_ms = -5", "`complete_hold_ms` must be 0–60000 ms"),
    ("incomplete_max_ms = 70000", "`incomplete_max_ms` must be 0–60000 ms"),
    ('detector = "magic"', "Invalid enum value 'magic' - at `$.asr.turn.detector`"),
    ("threshold = 1.5", "`threshold` must be between 0 and 1"),
])
def test_bad_turn_settings_are_refused_with_a_clear_error(toml: str, error: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse(f"[asr.turn]\n{toml}\n")
    assert error in str(refused.value)
