"""The one interface every speech recogniser sits behind, and the choice between them.

The VAD decides where an utterance begins and ends; an engine only transcribes one
utterance at a time: `start()` when speech begins (with the pre-roll), `feed()` as
audio comes, `finish()` at the end for the final text. Partial text goes to the
`on_partial` callback, always called on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from actors.asr.settings import AsrSettings

PartialCallback = Callable[[str], None]


class AsrError(RuntimeError):
    """The engine could not transcribe this utterance (the next one may work)."""


class Recognition(Protocol):
    """One utterance being transcribed."""

    def feed(self, pcm: bytes) -> None:
        """16 kHz mono PCM16; returns at once, the audio is processed in order."""

    async def finish(self) -> str:
        """No more audio: the final text (empty when nothing was said). Raises AsrError."""

    async def cancel(self) -> None:
        """Drop the utterance (session ended mid-speech)."""


class Engine(Protocol):
    provider: str  # recorded on transcript.final
    language: str | None  # of the transcripts, when known

    async def load(self) -> None:
        """Load models / open clients, once, before the first utterance."""

    async def start(self, on_partial: PartialCallback) -> Recognition: ...

    async def close(self) -> None: ...


def make_engine(settings: AsrSettings) -> Engine:
    # Imported here: a worker runs one engine and need not import the other's SDK.
    if settings.engine == "deepgram":
        from actors.asr.engine_deepgram import DeepgramEngine

        assert settings.deepgram is not None
        return DeepgramEngine(settings.deepgram)
    from actors.asr.engine_moonshine import MoonshineEngine

    return MoonshineEngine(partial_ms=settings.partial_ms)
