"""The provider names an assistant may choose (schemas) are the ones the actors can load."""

from __future__ import annotations

from actors.asr.engine import ENGINES
from actors.tts.providers import PROVIDERS
from schemas import ASR_PROVIDERS, TTS_PROVIDERS


def test_the_assistant_choices_are_the_registered_providers() -> None:
    assert set(ASR_PROVIDERS) == set(ENGINES)
    assert set(TTS_PROVIDERS) == set(PROVIDERS)
