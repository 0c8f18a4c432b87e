"""Speech synthesis providers behind one interface, chosen by the environment.

- `piper` (the offline default): the bundled en_US-joe-medium voice, or any Piper voice.
- `elevenlabs`: ElevenLabs' streaming API through the `elevenlabs` SDK, chosen by default
  when ELEVENLABS_API_KEY is set (environment or VAGENT_SECRETS_FILE).

Each provider lives in its own module, imported by name only when chosen: piper-tts is
GPL-3.0 and only `actors.tts.piper_voice` may import it, and neither SDK nor model is
loaded in processes that do not speak.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from typing import Protocol

from settings.config import ConfigError, secret

PROVIDERS: dict[str, str] = {
    "piper": "actors.tts.piper_voice",
    "elevenlabs": "actors.tts.elevenlabs_voice",
}


class TtsProvider(Protocol):
    name: str  # "piper", "elevenlabs": part of the cache key
    voice: str  # the voice within the provider: part of the cache key
    sample_rate: int  # of the PCM that stream() yields

    def stream(self, text: str) -> AsyncIterator[bytes]:
        """PCM16 mono at `sample_rate`, in chunks of whole samples, as soon as they exist."""
        ...

    async def close(self) -> None: ...


def provider_name() -> str:
    name = os.environ.get("VAGENT_TTS_PROVIDER", "").strip().lower()
    if name:
        return name
    return "elevenlabs" if secret("ELEVENLABS_API_KEY") else "piper"


async def open_provider(name: str | None = None, voice: str | None = None) -> TtsProvider:
    """Load the chosen provider and voice (a local voice loads its model here, once)."""
    name = name or provider_name()
    if name not in PROVIDERS:
        raise ConfigError(f"VAGENT_TTS_PROVIDER={name!r} is unknown; known: {', '.join(PROVIDERS)}")
    module = importlib.import_module(PROVIDERS[name])
    return await module.open_voice(voice)
