"""The one interface every speech recogniser sits behind, and the choice between them.

The VAD decides where an utterance begins and ends; an engine only transcribes one
utterance at a time: `start()` when speech begins (with the pre-roll), `feed()` as
audio comes, `finish()` at the end for the final text. Partial text goes to the
`on_partial` callback, always called on the event loop.

Adding an engine: a module with `def make(settings: AsrSettings) -> Engine` (raising
ConfigError when the settings cannot run it), and its entry point in pyproject.toml
(settings/plugins.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from actors.asr.settings import AsrSettings
from actors.plugins import Registry
from settings.config import ConfigError
from settings.plugins import ASR, plugins

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


class WholeUtterance:
    """A Recognition for engines that hear an utterance only once it is over: the audio is
    gathered, and `transcribe` gets all of it at the end (nothing when nothing came)."""

    def __init__(self, transcribe: Callable[[bytes], Awaitable[str]]) -> None:
        self.transcribe = transcribe
        self._audio = bytearray()

    def feed(self, pcm: bytes) -> None:
        self._audio += pcm

    async def finish(self) -> str:
        return await self.transcribe(bytes(self._audio)) if self._audio else ""

    async def cancel(self) -> None:
        self._audio.clear()


class Engine(Protocol):
    provider: str  # recorded on transcript.final
    language: str | None  # of the transcripts, when known

    async def load(self) -> None:
        """Load models / open clients, once, before the first utterance."""

    async def start(self, on_partial: PartialCallback) -> Recognition: ...

    async def close(self) -> None: ...


@runtime_checkable
class Multilingual(Protocol):
    """An engine that hears every language, told each session's (a server by URL)."""

    def speaking(self, language: str | None, prefer: str | None = None) -> Engine:
        """A view for one session: its language (None: unknown) and the provider its
        assistant picked, when the engine has several."""
        ...


# Imported only when chosen: a worker need not import the SDK of an engine it does not run.
ENGINES: Registry[Callable[[AsrSettings], Engine]] = Registry("ASR engine", plugins(ASR),
                                                            error=ConfigError)


def make_engine(settings: AsrSettings, name: str | None = None) -> Engine:
    """The named engine (by default the one the settings chose), not yet loaded."""
    return ENGINES.load(name or settings.engine)(settings)
