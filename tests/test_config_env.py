"""The environment variables that override vagent.toml: `load()` applies each to its typed
setting, once; `parse()` (what tests and tools build settings with) never reads them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from settings.config import ENV_OVERRIDES, Config, ConfigError, load, parse

# variable → (value set, where it lands, the typed value expected there)
CASES: dict[str, tuple[str, Callable[[Config], Any], Any]] = {
    "VAGENT_TTS_MAX_CHARS": ("150", lambda c: c.tts.max_chars, 150),
    "VAGENT_TTS_MAX_TURN_CHARS": ("900", lambda c: c.tts.max_turn_chars, 900),
    "VAGENT_TTS_PROVIDER": ("elevenlabs", lambda c: c.tts.provider, "elevenlabs"),
    "VAGENT_TTS_VOICE": ("/voices/amy.onnx", lambda c: c.tts.voice, "/voices/amy.onnx"),
    "VAGENT_TTS_PARALLEL": ("3", lambda c: c.tts.parallel, 3),
    "VAGENT_TTS_CACHE_MB": ("0.5", lambda c: c.tts.cache_mb, 0.5),
    "VAGENT_ELEVENLABS_MODEL": ("eleven_v3", lambda c: c.tts.elevenlabs.model, "eleven_v3"),
    "VAGENT_ELEVENLABS_SAMPLE_RATE": ("16000", lambda c: c.tts.elevenlabs.sample_rate, 16000),
    "VAGENT_ELEVENLABS_URL": ("http://127.0.0.1:9", lambda c: c.tts.elevenlabs.url,
                              "http://127.0.0.1:9"),
    "VAGENT_ASR_ENGINE": ("deepgram", lambda c: c.asr.engine, "deepgram"),
    "VAGENT_BARGE_IN_MIN_MS": ("500", lambda c: c.asr.barge_in_min_ms, 500),
    "VAGENT_ASR_PARTIAL_MS": ("800", lambda c: c.asr.partial_ms, 800),
    "VAGENT_VAD_THRESHOLD": ("0.6", lambda c: c.asr.vad.threshold, 0.6),
    "VAGENT_VAD_SILENCE_MS": ("700", lambda c: c.asr.vad.silence_ms, 700),
    "VAGENT_VAD_PREROLL_MS": ("300", lambda c: c.asr.vad.preroll_ms, 300),
    "VAGENT_VAD_MIN_SPEECH_MS": ("128", lambda c: c.asr.vad.min_speech_ms, 128),
    "VAGENT_ASR_MAX_UTTERANCE_MS": ("20000", lambda c: c.asr.vad.max_utterance_ms, 20000),
    "VAGENT_DEEPGRAM_URL": ("ws://127.0.0.1:9", lambda c: c.asr.deepgram.url, "ws://127.0.0.1:9"),
    "VAGENT_DEEPGRAM_MODEL": ("nova-2", lambda c: c.asr.deepgram.model, "nova-2"),
    "VAGENT_DEEPGRAM_LANGUAGE": ("de", lambda c: c.asr.deepgram.language, "de"),
    "VAGENT_ACK_WAIT": ("2", lambda c: c.actors.ack_wait, 2.0),
    "VAGENT_XIAOZHI_WAKE_WORDS": ("hey vagent, 小明同学 ,", lambda c: c.edge.xiaozhi.wake_words,
                                  ["hey vagent", "小明同学"]),
    "VAGENT_EMBED_THREADS": ("2", lambda c: c.knowledge.embed_threads, 2),
    "VAGENT_KB_MAX_CHUNKS": ("10", lambda c: c.knowledge.max_chunks, 10),
    "VAGENT_VISION_BASE_URL": ("http://127.0.0.1:9/v1", lambda c: c.vision.base_url,
                               "http://127.0.0.1:9/v1"),
    "VAGENT_VISION_MODEL": ("see-1", lambda c: c.vision.model, "see-1"),
}


@pytest.fixture
def settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vagent.toml"
    path.write_text('[tts]\nmax_chars = 120\nvoice = "from-the-file"\n[asr]\nengine = "moonshine"\n'
                    '[knowledge]\nmax_chunks = 50\n')
    monkeypatch.setenv("VAGENT_CONFIG", str(path))
    for name in ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    return path


def test_every_override_is_covered_here() -> None:
    assert sorted(CASES) == sorted(ENV_OVERRIDES)


def test_load_puts_each_variable_on_its_typed_setting(settings_file: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load()
    assert (defaults.tts.max_chars, defaults.tts.voice, defaults.asr.engine,
            defaults.knowledge.max_chunks) == (120, "from-the-file", "moonshine", 50)
    for name, (value, where, expected) in CASES.items():
        assert where(defaults) != expected, name  # so each case below shows a change
        monkeypatch.setenv(name, value)
        assert where(load()) == expected, name
        monkeypatch.delenv(name)
    for name, (value, _, _) in CASES.items():
        monkeypatch.setenv(name, value)
    config = load()
    assert [where(config) for _, where, _ in CASES.values()] == [
        expected for _, _, expected in CASES.values()]
    # parse() is the file alone: the same text, every variable still set, gives the file's values.
    assert parse(settings_file.read_text()) == defaults
    assert parse("") == Config()


def test_an_empty_variable_counts_as_unset(settings_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAGENT_TTS_VOICE", "")
    monkeypatch.setenv("VAGENT_KB_MAX_CHUNKS", " ")
    config = load()
    assert (config.tts.voice, config.knowledge.max_chunks) == ("from-the-file", 50)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("VAGENT_ACK_WAIT", "soon", "actors.ack_wait"),
    ("VAGENT_ASR_ENGINE", "whisper", "asr.engine"),
    ("VAGENT_TTS_PARALLEL", "0", ">= 1"),
    ("VAGENT_TTS_MAX_CHARS", "2.5", "tts.max_chars"),
])
def test_a_bad_value_names_its_variable_and_setting(settings_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                    name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name) as refused:
        load()
    assert says in str(refused.value)


def test_the_system_prompt_is_taken_verbatim(settings_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAGENT_SYSTEM_PROMPT", "  Be brief.  ")
    assert load().dialogue.system_prompt == "  Be brief.  "
    monkeypatch.setenv("VAGENT_SYSTEM_PROMPT", "")  # unlike the overrides, empty is a value here
    assert load().dialogue.system_prompt == ""
