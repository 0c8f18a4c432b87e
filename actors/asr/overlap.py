"""Speech over the assistant's speech: pause it, then let the words decide.

Speech long enough to be a barge-in (`barge_in_min_ms`) pauses the speaking turn
(`turn.paused`): the TTS holds its place. What the utterance turns out to say decides:

- words that are not all backchannels: a real interruption (`turn.interrupted`, reason
  `barge_in`), as soon as a partial transcript shows them, else on the final one; the
  utterance is then a turn;
- only backchannels ("mhm", "ok", "嗯", "好的", repeated or not): `speech.ignored`
  (`backchannel`) and `turn.resumed` (`backchannel`);
- no words at all (a cough, a noise; fillers like "uh", or what a recogniser writes for a
  cough, a lone "I." or "Oh."): `speech.ignored` (`noise`) and `turn.resumed` (`no_words`);
- nothing decided within `false_interruption_timeout_ms` of the pause: `turn.resumed`
  (`timeout`); words that come later still interrupt.

Shorter speech over the assistant never pauses it and is never a turn: it is recorded as
`speech.ignored` (`backchannel`, else `noise`: too short to interrupt, words or not).

The events' ids derive from the utterance's `speech.started` (or the pause), so a second
pass over the same audio re-emits the same ids whatever the timing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from actors.base import Context
from schemas import SpeechIgnored, TurnInterrupted, TurnPaused, TurnResumed, derived_id
from schemas.session import ResumeReason

log = logging.getLogger("vagent.asr")

Verdict = Literal["words", "backchannel", "noise"]

# A transcript of only these has no words (moonshine writes "Uh." for a cough).
FILLERS = frozenset({"uh", "um", "umm", "hm", "hmm", "mm", "mmm", "mhm", "er", "erm", "ah"})
_WORD = re.compile(r"[\w']+")
# What recognisers write for a sound that is no speech (a cough heard as "I.", "Oh.", "You."):
# alone, over the assistant, they are noise, not an interruption.
SOUNDS = frozenset({"i", "a", "oh", "the", "you"})
# Tokens of a transcript: a run of letters and digits, or one CJK character (Mandarin is
# written without spaces, and a recogniser may put some in anyway).
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_REPEAT = re.compile(r"(.)\1+")

# Slots of derived_id(cause, actor, n): far from the per-session counter's, whose cause differs.
PAUSED, INTERRUPTED, IGNORED, RESUMED = 20, 21, 22, 23


def has_words(text: str) -> bool:
    return any(w.lower() not in FILLERS for w in _WORD.findall(text))


def tokens(text: str) -> tuple[str, ...]:
    """Lower case, punctuation and spaces gone, letters held long written once: "Mmm-hmm!"
    and "mm hmm" both give ("m", "hm"), "嗯，嗯。" gives ("嗯", "嗯")."""
    text = unicodedata.normalize("NFKC", text).lower()
    return tuple(_REPEAT.sub(r"\1", t) for t in _TOKEN.findall(text))


class Backchannels:
    """Which transcripts are only acknowledgements, in English or Mandarin."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases = frozenset(t for t in (tokens(p) for p in phrases) if t)
        self.longest = max((len(p) for p in self.phrases), default=0)
        self.fillers = frozenset(tokens(" ".join(FILLERS | SOUNDS))) - {
            p[0] for p in self.phrases if len(p) == 1}

    def verdict(self, text: str) -> Verdict:
        heard = tokens(text)
        if all(t in self.fillers for t in heard):
            return "noise"
        return "backchannel" if self._only_phrases(heard) else "words"

    def _only_phrases(self, heard: tuple[str, ...]) -> bool:
        """Whether `heard` is backchannel phrases one after another, fillers between them
        ("mhm mhm", "uh, okay", "对对，好的")."""
        ends = {0}  # token counts that phrases and fillers cover exactly
        for start in range(len(heard)):
            if start not in ends:
                continue
            if heard[start] in self.fillers:
                ends.add(start + 1)
            for size in range(1, min(self.longest, len(heard) - start) + 1):
                if heard[start:start + size] in self.phrases:
                    ends.add(start + size)
        return len(heard) in ends


@dataclass(eq=False)
class _Pause:
    turn_id: str
    paused_id: str
    began: float  # monotonic
    members: set[str] = field(default_factory=set)  # utterances heard over it (speech.started ids)
    pending: set[str] = field(default_factory=set)  # … whose words are not known yet
    state: Literal["paused", "resumed", "over"] = "paused"  # over: interrupted, or the turn stopped
    timer: asyncio.Task[None] | None = None

    def stop_timer(self) -> None:
        if self.timer is not None and self.timer is not asyncio.current_task():
            self.timer.cancel()
        self.timer = None


class Overlap:
    """One session's speech over the assistant (see the module doc)."""

    def __init__(self, ctx: Context, session_id: str, backchannels: Iterable[str],
                 timeout_ms: int) -> None:
        self.ctx = ctx
        self.session_id = session_id
        self.backchannels = Backchannels(backchannels)
        self.timeout_ms = timeout_ms
        self._pause: _Pause | None = None  # of the turn playing (one at a time)

    async def pause(self, turn_id: str, speech_id: str, audio_ms: int) -> None:
        """Speech of `speech_id` reached the barge-in length over `turn_id`'s audio."""
        pause = self._pause
        if pause is not None and pause.turn_id == turn_id and pause.state != "over":
            pause.members.add(speech_id)
            pause.pending.add(speech_id)
            if pause.state == "paused":
                return  # already silent: this utterance waits with the other
        else:
            if pause is not None:
                pause.stop_timer()
            pause = self._pause = _Pause(turn_id, "", 0.0, {speech_id}, {speech_id})
        pause.state = "paused"
        pause.began = time.monotonic()
        pause.paused_id = derived_id(speech_id, self.ctx.actor.name, PAUSED)
        pause.timer = asyncio.create_task(self._expire(pause), name=f"pause:{self.session_id}")
        await self.ctx.emit(TurnPaused(session_id=self.session_id, turn_id=turn_id,
                                       audio_ms=audio_ms),
                            id=pause.paused_id, causation_id=speech_id)

    async def partial(self, speech_id: str, text: str) -> None:
        """A partial transcript: words in it interrupt at once, without waiting for the end."""
        pause = self._of(speech_id)
        if pause is not None and self.backchannels.verdict(text) == "words":
            await self._interrupt(pause, speech_id)

    async def settle(self, speech_id: str, turn_id: str, text: str, speech_ms: int) -> bool:
        """The final transcript of an utterance heard over `turn_id`: whether it is a turn."""
        verdict = self.backchannels.verdict(text)
        pause = self._of(speech_id)
        if pause is not None:
            pause.pending.discard(speech_id)
            if verdict == "words":
                await self._interrupt(pause, speech_id)
                return True
        ignored_id = derived_id(speech_id, self.ctx.actor.name, IGNORED)
        await self.ctx.emit(SpeechIgnored(
            session_id=self.session_id, turn_id=turn_id, speech_ms=speech_ms, text=text,
            reason="backchannel" if verdict == "backchannel" else "noise"),
            id=ignored_id, causation_id=speech_id)
        if pause is not None and pause.state == "paused" and not pause.pending:
            await self._resume(pause, "backchannel" if verdict == "backchannel" else "no_words",
                               ignored_id)
        return False

    def stopped(self, turn_id: str | None) -> None:
        """The turn stopped playing (`tts.stopped`, `turn.interrupted`): nothing to resume."""
        pause = self._pause
        if pause is not None and turn_id in (None, pause.turn_id):
            pause.state = "over"
            pause.stop_timer()

    def interrupted(self, turn_id: str) -> bool:
        """Whether `turn_id` was interrupted (or stopped) already: speech after that is a turn
        of its own, not over the assistant, though its `tts.stopped` may not be here yet."""
        pause = self._pause
        return pause is not None and pause.turn_id == turn_id and pause.state == "over"

    def close(self) -> None:
        if self._pause is not None:
            self._pause.stop_timer()

    def _of(self, speech_id: str) -> _Pause | None:
        pause = self._pause
        return pause if pause is not None and speech_id in pause.members else None

    async def _interrupt(self, pause: _Pause, speech_id: str) -> None:
        if pause.state == "over":
            return
        pause.state = "over"
        pause.stop_timer()
        await self.ctx.emit(TurnInterrupted(session_id=self.session_id, turn_id=pause.turn_id,
                                            reason="barge_in"),
                            id=derived_id(speech_id, self.ctx.actor.name, INTERRUPTED),
                            causation_id=speech_id)

    async def _resume(self, pause: _Pause, reason: ResumeReason, cause_id: str) -> None:
        if pause.state != "paused":
            return
        pause.state = "resumed"
        pause.stop_timer()
        paused_ms = round((time.monotonic() - pause.began) * 1000)
        await self.ctx.emit(TurnResumed(session_id=self.session_id, turn_id=pause.turn_id,
                                        reason=reason, paused_ms=paused_ms),
                            id=derived_id(cause_id, self.ctx.actor.name, RESUMED),
                            causation_id=cause_id)

    async def _expire(self, pause: _Pause) -> None:
        await asyncio.sleep(self.timeout_ms / 1000)
        try:
            await self._resume(pause, "timeout", pause.paused_id)
        except Exception:  # the TTS stays paused until the words decide
            log.exception("turn.resumed not stored", extra={"session": self.session_id})
