"""Speech synthesis providers behind one interface, chosen by `[tts] provider`.

- `piper` (the offline default): the bundled en_US-joe-medium voice, or any Piper voice.
- `elevenlabs`: ElevenLabs' streaming API through the `elevenlabs` SDK, chosen by default
  when ELEVENLABS_API_KEY is set (environment or VAGENT_SECRETS_FILE).
- `openai`: `[[tts.providers]]`, a chain of OpenAI-compatible speech servers, chosen by
  default when configured; a provider's own name opens the chain with it tried first.

Each provider lives in its own module, imported by name only when chosen: piper-tts is
GPL-3.0 and only `actors.tts.piper_voice` may import it, and neither SDK nor model is
loaded in processes that do not speak. Adding one: a module with
`async def open_voice(voice: str | None, settings: TtsSettings) -> TtsProvider`, and its entry point in
pyproject.toml (settings/plugins.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

import msgspec

from actors.plugins import Registry
from settings.config import ConfigError, TtsSettings, secret
from settings.plugins import TTS, plugins


class TtsProvider(Protocol):
    name: str  # "piper", "elevenlabs": part of the cache key
    voice: str  # the voice within the provider: part of the cache key
    sample_rate: int  # of the PCM that stream() yields

    def stream(self, text: str) -> AsyncIterator[bytes]:
        """PCM16 mono at `sample_rate`, in chunks of whole samples, as soon as they exist."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Chain(Protocol):
    """A provider made of several (`[[tts.providers]]`): an assistant's pick among them
    shares their breakers instead of opening the chain again."""

    def picking(self, name: str, voice: str | None) -> TtsProvider | None:
        """The chain with `name` tried first, speaking in `voice`; None when `name` is not
        one of its providers (nor the chain itself)."""
        ...


PROVIDERS: Registry[Callable[[str | None, TtsSettings], Awaitable[TtsProvider]]] = Registry(
    "TTS provider", plugins(TTS), error=ConfigError)


CHAIN = "openai"  # the provider made of `[[tts.providers]]`


def provider_name(settings: TtsSettings) -> str:
    if settings.provider:
        return settings.provider
    if settings.providers:
        return CHAIN
    return "elevenlabs" if secret("ELEVENLABS_API_KEY") else "piper"


async def open_provider(settings: TtsSettings, name: str | None = None,
                        voice: str | None = None) -> TtsProvider:
    """Load the chosen provider and voice (a local voice loads its model here, once). A
    name of `[[tts.providers]]` opens their chain with that one tried first."""
    name = name or provider_name(settings)
    if any(p.name == name for p in settings.providers):
        return await PROVIDERS.load(CHAIN)(voice, msgspec.structs.replace(settings, provider=name))
    return await PROVIDERS.load(name)(voice, settings)
