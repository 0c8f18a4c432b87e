"""Speech providers are entry points: the names an assistant may choose are exactly the ones
the actors load, and each names a module that exists."""

from __future__ import annotations

import importlib.util

import pytest

from actors.asr.engine import ENGINES
from actors.tts.providers import PROVIDERS
from settings.plugins import ASR, TTS, plugin_names, plugins


def test_the_assistant_choices_are_the_registered_providers() -> None:
    assert plugin_names(ASR) == sorted(ENGINES) == ["deepgram", "moonshine", "openai", "whisper"]
    assert plugin_names(TTS) == sorted(PROVIDERS) == ["elevenlabs", "kokoro", "openai", "piper"]


@pytest.mark.parametrize("group", [ASR, TTS])
def test_every_entry_point_names_a_module_that_exists(group: str) -> None:
    for name, target in plugins(group).items():
        module, _, attr = target.partition(":")
        assert attr, name
        assert importlib.util.find_spec(module) is not None, target
