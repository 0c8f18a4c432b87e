"""A session whose assistant's language is `auto`: its first utterance picks the engine.

The first utterance is gathered whole, its language identified (`zh` or `en`), and then
transcribed by that language's engine; every later utterance of the session goes straight
to that engine (with its partial transcripts, when it makes them). One object per session,
so one session's choice is never another's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from actors.asr.engine import Engine, PartialCallback, Recognition, WholeUtterance

log = logging.getLogger("vagent.asr")

Identify = Callable[[bytes], Awaitable[str]]  # PCM16 16 kHz → a language code


class FirstUtteranceLanguage:
    def __init__(self, engines: dict[str, Engine], identify: Identify, session_id: str) -> None:
        self.engines = engines  # by language code
        self.identify = identify
        self.session_id = session_id
        self.chosen: Engine | None = None
        self.provider = "auto"
        self.language: str | None = None

    async def load(self) -> None:
        pass  # the engines are loaded by whoever made them

    async def start(self, on_partial: PartialCallback) -> Recognition:
        if self.chosen is not None:
            return await self.chosen.start(on_partial)
        return WholeUtterance(self._first_utterance)

    async def close(self) -> None:
        pass  # the engines are shared: their owner closes them

    async def choose(self, pcm: bytes) -> Engine:
        if self.chosen is None:
            language = await self.identify(pcm)
            self.chosen = self.engines.get(language) or next(iter(self.engines.values()))
            self.provider, self.language = self.chosen.provider, self.chosen.language
            log.info("session language identified", extra={
                "session": self.session_id, "language": language, "engine": self.provider})
        return self.chosen

    async def _first_utterance(self, pcm: bytes) -> str:
        """Identified, then transcribed whole by the chosen engine (no partials for it)."""
        engine = await self.choose(pcm)
        recognition = await engine.start(lambda _text: None)
        recognition.feed(pcm)
        return await recognition.finish()
