"""ElevenLabs streaming text-to-speech through the official `elevenlabs` SDK.

Settings: ELEVENLABS_API_KEY (environment or VAGENT_SECRETS_FILE), `[tts] voice` (a voice
id) and `[tts.elevenlabs]` (model, sample rate, base URL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from elevenlabs.client import AsyncElevenLabs

from settings.config import ConfigError, TtsSettings, secret

DEFAULT_VOICE = "JBFqnCBsd6RMkjVDRZzb"  # "George", a premade voice every account has
DEFAULT_MODEL = TtsSettings().elevenlabs.model
PCM_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})


class ElevenLabsTts:
    name = "elevenlabs"

    def __init__(self, api_key: str, *, voice: str = DEFAULT_VOICE, model: str = DEFAULT_MODEL,
                 sample_rate: int = 24000, base_url: str | None = None,
                 timeout: float = 15.0) -> None:
        if sample_rate not in PCM_RATES:
            raise ConfigError(f"ElevenLabs gives PCM at {sorted(PCM_RATES)} Hz, not {sample_rate}")
        self.voice = voice
        self.model = model
        self.sample_rate = sample_rate
        # A live sentence that takes longer than this is useless anyway: fail, say so.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))
        self._client = AsyncElevenLabs(api_key=api_key, base_url=base_url, timeout=timeout,
                                       httpx_client=self._http)

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        carry = b""  # HTTP chunks may split a sample
        async for chunk in self._client.text_to_speech.stream(
                self.voice, text=text, model_id=self.model,
                output_format=f"pcm_{self.sample_rate}"):
            data = carry + chunk
            whole = len(data) - len(data) % 2
            carry = data[whole:]
            if whole:
                yield data[:whole]

    async def close(self) -> None:
        await self._http.aclose()


async def open_voice(voice: str | None, settings: TtsSettings) -> ElevenLabsTts:
    key = secret("ELEVENLABS_API_KEY")
    if not key:
        raise ConfigError("the elevenlabs TTS provider needs ELEVENLABS_API_KEY "
                          "(environment or VAGENT_SECRETS_FILE)")
    return ElevenLabsTts(
        key,
        voice=voice or settings.voice or DEFAULT_VOICE,
        model=settings.elevenlabs.model,
        sample_rate=settings.elevenlabs.sample_rate,
        base_url=settings.elevenlabs.url,
    )
