"""One session's voice: its turns spoken one at a time, frames paced at real time.

A turn's sentences synthesize ahead (`Synthesizer`), are encoded as soon as their audio
exists (the producer), and are sent at the pace they play (the sender), never more than
`LEAD_FRAMES` ahead of the listener: an interruption then silences the client within that
lead, and the sender itself stops at once (it waits on the stop, not on a sleep).

A newer turn supersedes an older one still speaking: its answer is the one that matters.

Speech over the assistant pauses its turn (`turn.paused`): the sender holds its place in the
audio, sending nothing, until `turn.resumed` (it goes on from the next frame) or an
interruption. The pause is not audio: offsets and `spoken_ms` count frames sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from actors.base import Context
from actors.dialogue.sentences import clip
from actors.tts.outbox import Outbox
from actors.tts.synth import Synthesis, SynthesisFailed
from actors.tts.voices import Voices
from audio.encode import AudioEncoder, resample
from bus.blobs import put_pcm
from bus.client import Bus
from bus.subjects import audio_out
from schemas import (
    AudioParams,
    BlobRef,
    Error,
    SessionEvent,
    TtsSentence,
    TtsStarted,
    TtsStopped,
    derived_id,
)
from schemas.ids import id_time_ms
from telemetry import tracing

log = logging.getLogger("vagent.tts")

LEAD_FRAMES = 2  # frames the client may hold beyond the one playing: jitter margin
TURN_IDLE = 120.0  # seconds without a sentence or the final message: the turn is over
PIECE_SECONDS = 0.25  # audio encoded per step, so frames flow while the rest is encoded
STORE_TIMEOUT = 5.0  # seconds to store a turn's recording before tts.stopped goes without it
# A pause nobody resolves (the ASR gone) ends in this many seconds: the turn goes on.
HOLD_MAX = 30.0
# Slots of derived_id(cause, actor, n) for events emitted after handle() returned (their
# cause may be a later sentence, the interruption or the final message); ctx.emit inside
# handle() uses 0, 1, …
STARTED, SENTENCE, STOPPED, FAILED = 10, 11, 12, 13


def opened_ns(turn_id: str, ts: int) -> int:
    """When a turn began: its name is its input's id, a ULID, which holds the time it was made
    (ms). `ts`, a sentence's own time, for a turn named otherwise."""
    try:
        return id_time_ms(turn_id) * 1_000_000 if len(turn_id) == 26 else ts
    except ValueError:
        return ts


@dataclass(eq=False)
class Sentence:
    event_id: str
    index: int
    text: str
    synthesis: Synthesis  # its chunks are also the turn's recording (no second copy)
    ctx: Context  # of its assistant.sentence: what the turn's tts events are emitted through
    provider: str  # who speaks it, and with which voice
    voice: str
    queued_ns: int = field(default_factory=time.time_ns)  # when its synthesis was asked for


@dataclass(frozen=True)
class _Failed:
    sentence: Sentence
    reason: str


_END = object()  # the producer has nothing more for this turn
_STOP = object()  # wakes a waiting sender after an interruption


def _running() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(eq=False)
class Turn:
    turn_id: str
    sentences: list[Sentence] = field(default_factory=list)
    inbox: asyncio.Queue[Sentence | None] = field(default_factory=asyncio.Queue)
    frames: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    end_cause: str | None = None  # the final assistant.message
    stop_cause: str | None = None  # the interruption, or the newer turn's first sentence
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    placed: list[tuple[Sentence, int]] = field(default_factory=list)  # (sentence, offset_ms) as sent
    chars: int = 0  # of text queued to speak, against the limit per turn
    running: asyncio.Event = field(default_factory=_running)  # clear while paused
    steered_ts: int = 0  # the latest turn.paused or turn.resumed heeded (they may cross)

    @property
    def open(self) -> bool:
        return self.end_cause is None and not self.stop.is_set()

    def add(self, sentence: Sentence) -> None:
        self.sentences.append(sentence)
        self.chars += len(sentence.text)
        self.inbox.put_nowait(sentence)

    def finish(self, cause_id: str) -> None:
        if self.open:
            self.end_cause = cause_id
            self.inbox.put_nowait(None)

    def hold(self, paused: bool, ts: int) -> None:
        """Pause (or resume) the turn's audio, unless a later pause or resume was heeded."""
        if ts < self.steered_ts:
            return
        self.steered_ts = ts
        if paused and not self.stop.is_set():
            self.running.clear()
        else:
            self.running.set()

    def halt(self, cause_id: str) -> None:
        if self.stop.is_set():
            return
        self.stop_cause = cause_id
        self.stop.set()
        self.running.set()  # a paused sender wakes, to stop
        self.inbox.put_nowait(None)
        self.frames.put_nowait(_STOP)
        for sentence in self.sentences:
            sentence.synthesis.cancel()


class Speaker:
    def __init__(self, session_id: str, bus: Bus, *, actor: str, encode_pool: Executor) -> None:
        self.session_id = session_id
        self.bus = bus
        self.actor = actor
        self.voices: Voices | None = None  # the session assistant's voices, once chosen
        self.params: AudioParams | None = None  # the session's audio_out, once read
        self.params_error: str | None = None
        self.outbox = Outbox()
        self.turns: deque[Turn] = deque()  # [0] speaks; later ones wait (already halted, or new)
        self.closed: deque[str] = deque(maxlen=64)  # turns done or interrupted: late sentences drop
        self.clipped: deque[str] = deque(maxlen=64)  # turns that reached the limit per turn
        self.abort_ts = 0  # an interruption naming no turn drops every sentence older than it
        self.ended_ts = 0  # the session's end: turns opened before it are never spoken
        self._encode_pool = encode_pool
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self._task is None or self._task.done()

    def accepts(self, turn_id: str, ts: int) -> bool:
        if turn_id in self.closed or ts < self.abort_ts or opened_ns(turn_id, ts) <= self.ended_ts:
            return False
        turn = self._turn(turn_id)
        return turn is None or turn.open

    def allot(self, turn_id: str, text: str, limit: int, max_chars: int, *,
              more: bool = False) -> tuple[str, bool]:
        """What of `text` the turn may still say within `limit` characters in all (all of it,
        its start up to a pause, or nothing once the limit was reached), and whether this
        sentence is the one that reached it. `more`: the sentence goes on beyond `text`."""
        if turn_id in self.clipped:
            return "", False
        turn = self._turn(turn_id)
        left = limit - (turn.chars if turn is not None else 0)
        if len(text) <= left and not more:
            return text, False
        self.clipped.append(turn_id)
        return (clip(text, left, max_chars) if left > 0 else ""), True

    def first_of(self, turn_id: str) -> bool:
        """Whether a sentence of `turn_id` would be its first: nothing of it plays yet."""
        return self._turn(turn_id) is None

    def say(self, turn_id: str, sentence: Sentence) -> None:
        turn = self._turn(turn_id)
        if turn is None:
            for older in self.turns:
                older.halt(sentence.event_id)
            turn = Turn(turn_id)
            self.turns.append(turn)
        turn.add(sentence)
        if self.idle:
            self._task = asyncio.create_task(self._run(), name=f"tts:{self.session_id}")

    def end(self, turn_id: str, cause_id: str) -> None:
        turn = self._turn(turn_id)
        if turn is not None:
            turn.finish(cause_id)

    def interrupt(self, turn_id: str | None, cause_id: str, ts: int) -> None:
        if turn_id is None:
            self.abort_ts = max(self.abort_ts, ts)
        elif self._turn(turn_id) is None:
            self.closed.append(turn_id)  # its sentences may still be on their way
        for turn in self.turns:
            if turn_id is None or turn.turn_id == turn_id:
                turn.halt(cause_id)

    def pause(self, turn_id: str | None, ts: int, paused: bool = True) -> None:
        """Speech over the turn: hold its audio where it is (`paused`), or go on."""
        turn = self._turn(turn_id) if turn_id is not None else None
        if turn is not None:
            turn.hold(paused, ts)

    def hang_up(self, cause_id: str, ts: int) -> None:
        """The session ended with nobody left to listen: stop what plays, and speak nothing of
        a turn that began before (its answer may still be streaming); a turn begun after it,
        in the session resumed, is spoken."""
        self.ended_ts = max(self.ended_ts, ts)
        self.interrupt(None, cause_id, ts)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop speaking (tts.stopped is still recorded) and store what is pending."""
        for turn in self.turns:
            turn.halt(turn.sentences[-1].event_id)
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        await self.outbox.close(timeout)

    def _turn(self, turn_id: str) -> Turn | None:
        return next((t for t in self.turns if t.turn_id == turn_id), None)

    async def _run(self) -> None:
        while self.turns:
            turn = self.turns[0]
            try:
                await self._play(turn)
            except Exception:
                log.exception("speaking failed", extra={"aggregate": self.session_id})
            finally:
                self.turns.popleft()
                self.closed.append(turn.turn_id)

    async def _play(self, turn: Turn) -> None:
        if turn.stop.is_set() or self.params is None:
            return  # stopped before a sound: nothing started, nothing to stop
        encoder = AudioEncoder(self.params)
        producer = asyncio.create_task(self._produce(turn, encoder))
        try:
            await self._send(turn, encoder.frame_ms)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            for sentence in turn.sentences:
                sentence.synthesis.cancel()

    async def _produce(self, turn: Turn, encoder: AudioEncoder) -> None:
        try:
            await self._produce_all(turn, encoder)
        except Exception:
            log.exception("encoding failed", extra={"aggregate": self.session_id})
        turn.frames.put_nowait(_END)

    async def _produce_all(self, turn: Turn, encoder: AudioEncoder) -> None:
        loop = asyncio.get_running_loop()

        async def encode(step: Callable[..., list[bytes]], *args: object) -> None:
            for frame in await loop.run_in_executor(self._encode_pool, step, *args):
                turn.frames.put_nowait(frame)

        while True:
            try:
                # Not wait_for: on Python 3.11 it can swallow _play's cancellation of this
                # producer, which would then wait for the next sentence instead of ending.
                async with asyncio.timeout(TURN_IDLE):
                    sentence = await turn.inbox.get()
            except TimeoutError:
                sentence = None
            if sentence is None or turn.stop.is_set():
                return
            turn.frames.put_nowait(sentence)  # where its audio starts
            rate = sentence.synthesis.sample_rate
            piece = int(rate * PIECE_SECONDS) * 2
            # A little over one frame: the resampler holds back a few samples.
            urgent = int(rate * encoder.frame_ms * 1.25 / 1000) * 2
            try:
                async for pcm in sentence.synthesis.read():
                    start = 0
                    if turn.frames.qsize() <= 1:
                        # The sender is waiting: its next frame is encoded here on the loop
                        # (about 1 ms) rather than after a worker thread's GIL hand-offs
                        # (about 10 ms measured when the loop is busy).
                        for frame in encoder.encode(pcm[:urgent], rate):
                            turn.frames.put_nowait(frame)
                        start = urgent
                    for at in range(start, len(pcm), piece):
                        await encode(encoder.encode, pcm[at:at + piece], rate)
            except SynthesisFailed as exc:
                turn.frames.put_nowait(_Failed(sentence, str(exc)))
            await encode(encoder.end_segment)

    async def _send(self, turn: Turn, frame_ms: int) -> None:
        subject = audio_out(self.session_id)
        frame_s = frame_ms / 1000
        lead = LEAD_FRAMES * frame_s
        sent, play_end, started = 0, 0.0, False
        starting: Sentence | None = None
        while True:
            item = await turn.frames.get()
            if turn.stop.is_set() or item is _STOP:
                break
            if item is _END:
                # The client is still playing its lead: the turn stops when the sound does.
                await self._pause(turn, play_end - time.monotonic())
                break
            if isinstance(item, Sentence):
                starting = item
                continue
            if isinstance(item, _Failed):
                self._emit(Error(session_id=self.session_id, turn_id=turn.turn_id, code="tts_failed",
                                 message=f"sentence {item.sentence.index} not spoken: {item.reason}",
                                 retryable=True, source="tts"),
                           item.sentence, FAILED)
                continue
            assert isinstance(item, bytes)
            ahead = play_end - time.monotonic()
            if ahead + frame_s > lead and await self._pause(turn, ahead + frame_s - lead):
                break
            if not turn.running.is_set() and await self._held(turn):
                break
            if not started:
                # Stored before the first frame: whoever relays audio sees the start first.
                first = turn.sentences[0]
                self._emit(TtsStarted(session_id=self.session_id, turn_id=turn.turn_id,
                                      provider=first.provider, voice=first.voice), first, STARTED)
                await self.outbox.flush()
                started = True
            if starting is not None:
                turn.placed.append((starting, sent * frame_ms))
                synthesis = starting.synthesis
                self._emit(TtsSentence(session_id=self.session_id, turn_id=turn.turn_id,
                                       text=starting.text, index=starting.index,
                                       offset_ms=sent * frame_ms,
                                       # unknown while a streaming provider is still at it
                                       duration_ms=synthesis.duration_ms if synthesis.done else 0),
                           starting, SENTENCE)
                if tracing.enabled():  # synthesis asked → its first frame sent
                    tracing.record("tts sentence", starting.ctx.traceparent, starting.queued_ns,
                                   attributes={"vagent.session_id": self.session_id,
                                               "vagent.tts.provider": starting.provider,
                                               "vagent.tts.voice": starting.voice,
                                               "vagent.tts.index": starting.index,
                                               "vagent.tts.chars": len(starting.text)})
                starting = None
            try:
                await self.bus.publish_core(subject, item)
            except Exception as exc:  # NATS away: this frame is lost, the next may pass
                log.debug("audio frame dropped: %r", exc)
            play_end = max(play_end, time.monotonic()) + frame_s
            sent += 1
        if started:
            unheard = max(0.0, play_end - time.monotonic()) if turn.stop.is_set() else 0.0
            cause = turn.stop_cause or turn.end_cause or turn.sentences[-1].event_id
            spoken_ms = max(0, round(sent * frame_ms - unheard * 1000))
            self._emit(TtsStopped(session_id=self.session_id, turn_id=turn.turn_id,
                                  spoken_ms=spoken_ms, audio=await self._store(turn, spoken_ms)),
                       turn.sentences[-1], STOPPED, cause=cause)

    async def _store(self, turn: Turn, spoken_ms: int) -> BlobRef | None:
        """Keep what the listener heard of the turn (each sentence at its offset, cut where an
        interruption stopped it), so a session can be listened to again (`vagent session
        export --wav`). The answer matters more than its recording: a failure is logged."""
        if not turn.placed or spoken_ms <= 0:
            return None
        rate = turn.placed[0][0].synthesis.sample_rate
        pcm = bytearray(-(-spoken_ms * rate // 1000) * 2)  # rounded up: duration_ms is spoken_ms
        for sentence, offset_ms in turn.placed:
            at = offset_ms * rate // 1000 * 2
            piece = b"".join(sentence.synthesis.chunks)
            if sentence.synthesis.sample_rate != rate:  # another voice (`auto`: by script)
                piece = resample(piece, sentence.synthesis.sample_rate, rate)
            # What was synthesized beyond the frames sent lies past spoken_ms: cut here.
            piece = piece[:max(0, len(pcm) - at)]
            pcm[at:at + len(piece)] = piece
        name = f"{self.session_id}/out/{turn.turn_id}.pcm"
        try:
            return await asyncio.wait_for(put_pcm(self.bus, name, bytes(pcm), sample_rate=rate),
                                          STORE_TIMEOUT)
        except Exception as exc:
            log.warning("turn audio not stored: %r", exc, extra={"aggregate": self.session_id})
            return None

    @staticmethod
    async def _pause(turn: Turn, seconds: float) -> bool:
        """Sleep unless interrupted; True if the turn was stopped."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):  # cancellation-safe, unlike 3.11's wait_for
                    await turn.stop.wait()
        return turn.stop.is_set()

    @staticmethod
    async def _held(turn: Turn) -> bool:
        """Wait while the turn is paused (at most HOLD_MAX); True if it was stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HOLD_MAX):
                await turn.running.wait()
        turn.running.set()
        return turn.stop.is_set()

    def _emit(self, event: SessionEvent, sentence: Sentence, slot: int, *,
              cause: str | None = None) -> None:
        cause = cause or sentence.event_id
        self.outbox.post(sentence.ctx, sentence.ctx.stamp(
            event, id=derived_id(cause, self.actor, slot), causation_id=cause))
