"""When a pause ends an utterance: by silence alone, or by the turn model's judgement.

The segmenter (actors.asr.vad) finds the pauses and asks its `Ender` at each silent window
how long the silence has lasted; the ender says whether the utterance ends there. Both
enders count audio time only, so a replay of the same audio ends the same utterances at
the same places.

- `SilenceEnd`: a fixed silence ends every utterance (`[asr.vad] silence_ms`).
- `ModelEnd`: once the silence reaches `complete_hold_ms`, the turn model hears the
  utterance so far (its trailing silence included, as the model was trained); P(complete)
  at or above `threshold` ends it there. Otherwise it keeps listening: speech resuming
  continues the same utterance, and `incomplete_max_ms` of silence ends it anyway. A model
  that fails is not asked again in that session: silence alone ends its utterances.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from schemas import TurnEnd

log = logging.getLogger("vagent.asr")


class Judge(Protocol):
    def complete(self, pcm: bytes) -> float: ...


class Ender(Protocol):
    def pause(self, silent_ms: int, audio: Callable[[], bytes]) -> TurnEnd | None:
        """`silent_ms` of silence so far after speech; `audio()` is the utterance until now
        (up to its last 8 s). A `TurnEnd` ends the utterance here."""
        ...

    def resumed(self) -> None:
        """Speech came back: the next silence is a new pause."""
        ...


class SilenceEnd:
    def __init__(self, silence_ms: int) -> None:
        self.silence_ms = silence_ms

    def pause(self, silent_ms: int, audio: Callable[[], bytes]) -> TurnEnd | None:
        return TurnEnd(by="silence", silence_ms=silent_ms) if silent_ms >= self.silence_ms else None

    def resumed(self) -> None:
        pass


class ModelEnd:
    def __init__(self, judge: Judge, *, complete_hold_ms: int, incomplete_max_ms: int,
                 threshold: float, fallback: SilenceEnd, session_id: str | None = None) -> None:
        self.judge = judge
        self.complete_hold_ms = complete_hold_ms
        self.incomplete_max_ms = incomplete_max_ms
        self.threshold = threshold
        self.fallback = fallback
        self.session_id = session_id
        self.failed = False
        self._probability: float | None = None  # this pause's judgement, once asked

    def pause(self, silent_ms: int, audio: Callable[[], bytes]) -> TurnEnd | None:
        if self.failed:
            return self.fallback.pause(silent_ms, audio)
        if self._probability is None and silent_ms >= self.complete_hold_ms:
            try:
                self._probability = round(self.judge.complete(audio()), 3)
            except Exception as exc:
                self.failed = True
                log.warning("turn model failed: silence ends this session's utterances",
                            extra={"session": self.session_id, "error": repr(exc)})
                return self.fallback.pause(silent_ms, audio)
            if self._probability >= self.threshold:
                return TurnEnd(by="model", probability=self._probability, silence_ms=silent_ms)
        if silent_ms >= self.incomplete_max_ms:
            return TurnEnd(by="max_wait", probability=self._probability, silence_ms=silent_ms)
        return None

    def resumed(self) -> None:
        self._probability = None
