"""Local ASR: moonshine tiny-en (bundled in moonshine-voice 0.1.0; nothing is downloaded).

One moonshine stream per utterance: it re-transcribes the growing audio every
`partial_ms` of audio (its own clock is audio time), which gives the partial text,
and `stop()` transcribes the rest for the final text. All moonshine calls run on one
worker thread: they take 100–300 ms each and must not stall the event loop, and one
thread keeps every stream's calls in order without assuming the C library is safe to
enter from several threads at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import numpy as np
from moonshine_voice import ModelArch, get_model_path
from moonshine_voice.transcriber import Stream, Transcriber, TranscriptEvent

from actors.asr.engine import AsrError, PartialCallback
from actors.asr.settings import AsrSettings

MODEL = "tiny-en"  # the one model moonshine-voice 0.1.0 ships; never get_model_for_language()
# moonshine 0.1.0 carries state (its internal VAD's, it seems) from a finished stream into
# the next transcription, even on another Transcriber: right after one utterance, 0.2 s of
# "uh" came out as "Yeah." and 3 s of noise as "The first is the", where a clean start gives
# nothing. One non-streaming pass over a little silence absorbs it (~7 ms).
_FLUSH = [0.0] * 1600
# Its stream drops a last word that ends within ~0.3 s of the stream's end ("…in Paris" for
# "…in Paris today"), and the turn model ends an utterance ~0.2 s after its last word: this
# much silence after the audio lets the word through (measured on the committed clips).
_TAIL = [0.0] * (16000 * 256 // 1000)


class MoonshineEngine:
    provider = "moonshine"
    language = "en"

    def __init__(self, partial_ms: int = 400) -> None:
        self.partial_ms = partial_ms
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="moonshine")
        self._transcriber: Transcriber | None = None

    async def load(self) -> None:
        if self._transcriber is None:
            self._transcriber = await self._run(
                Transcriber, str(get_model_path(MODEL)), ModelArch.TINY)

    async def start(self, on_partial: PartialCallback) -> MoonshineRecognition:
        await self.load()
        recognition = MoonshineRecognition(self, on_partial, asyncio.get_running_loop())
        await self._run(recognition.open)
        return recognition

    async def close(self) -> None:
        transcriber, self._transcriber = self._transcriber, None
        if transcriber is not None:
            await self._run(transcriber.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _flush(self) -> None:
        """Queue the state-absorbing pass (see _FLUSH) behind the stream that just ended."""
        def run() -> None:
            if self._transcriber is not None:
                self._transcriber.transcribe_without_streaming(_FLUSH, 16000)

        try:
            self._run(run).add_done_callback(_ignore)
        except RuntimeError:  # the engine is closing: no next transcription to protect
            pass

    def transcribe(self, pcm: bytes) -> str:
        """Blocking, whole-utterance transcription (benchmarks, tests); call from a thread."""
        assert self._transcriber is not None, "load() first"
        transcript = self._transcriber.transcribe_without_streaming(_floats(pcm), 16000)
        return _join([(line.line_id, line.text) for line in transcript.lines])


def make(settings: AsrSettings) -> MoonshineEngine:
    return MoonshineEngine(partial_ms=settings.partial_ms)


class MoonshineRecognition:
    def __init__(self, engine: MoonshineEngine, on_partial: PartialCallback,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.on_partial = on_partial
        self.loop = loop
        self._stream: Stream | None = None
        self._lines: dict[int, str] = {}  # moonshine may split an utterance into lines
        self._last_partial = ""
        self._error: BaseException | None = None

    # --- on the moonshine thread ------------------------------------------------------

    def open(self) -> None:
        assert self.engine._transcriber is not None
        stream = self.engine._transcriber.create_stream(update_interval=self.engine.partial_ms / 1000)
        stream.add_listener(self._on_event)
        stream.start()
        self._stream = stream

    def _on_event(self, event: TranscriptEvent) -> None:
        line = getattr(event, "line", None)
        if line is None:
            return
        self._lines[line.line_id] = line.text
        text = _join(sorted(self._lines.items()))
        if text and text != self._last_partial:
            self._last_partial = text
            self.loop.call_soon_threadsafe(self.on_partial, text)

    def _add(self, pcm: bytes) -> None:
        if self._stream is not None and self._error is None:
            self._stream.add_audio(_floats(pcm), 16000)

    def _stop(self) -> str:
        stream, self._stream = self._stream, None
        if stream is None:
            return ""
        try:
            if self._error is None:
                stream.add_audio(_TAIL, 16000)
            transcript = stream.stop()
            for line in transcript.lines if transcript else []:
                self._lines[line.line_id] = line.text
        finally:
            stream.close()
        return _join(sorted(self._lines.items()))

    # --- on the event loop ------------------------------------------------------------

    def feed(self, pcm: bytes) -> None:
        if pcm:
            self.engine._run(self._add, pcm).add_done_callback(self._check)

    async def finish(self) -> str:
        try:
            text = await self.engine._run(self._stop)
        except Exception as exc:
            raise AsrError(f"moonshine failed: {exc!r}") from exc
        finally:
            self.engine._flush()
        if self._error is not None:
            raise AsrError(f"moonshine failed: {self._error!r}")
        return text

    async def cancel(self) -> None:
        try:
            await self.engine._run(self._stop)
        finally:
            self.engine._flush()

    def _check(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()


def _ignore(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed flush only loses the workaround


def _floats(pcm: bytes) -> list[float]:
    return (np.frombuffer(pcm, dtype="<i2") / 32768.0).tolist()


def _join(lines: list[tuple[int, str]]) -> str:
    return " ".join(text.strip() for _, text in lines if text and text.strip())
