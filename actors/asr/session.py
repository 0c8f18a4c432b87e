"""One session's audio pipeline: frames → 16 kHz PCM → VAD → ASR → events.

Audio frames (core NATS `audio.in`) and the few session events that steer the
pipeline (`listen.*`, `tts.*`, `turn.interrupted`, `session.ended`, seen on the log's
subjects) go through one queue, so they are handled in the order they arrived.

Per utterance: `speech.started`; `transcript.partial` on the live subject while it
goes on; `speech.stopped` with the utterance's audio (pre-roll included) stored in
the Object Store; `transcript.final` unless nothing was said. Every event id is
derived from the session's `session.started` and a per-session counter, so a second
pass over the same audio re-emits the same ids and JetStream keeps one of each.

Barge-in: speech of at least `barge_in_min_ms` while the assistant speaks (between
`tts.started` and `tts.stopped`) pauses the speaking turn, and its words decide whether it
interrupts it or it resumes (`actors.asr.overlap`). Speech over the assistant that is not an
interruption (a cough, an "mhm", anything shorter) gets `speech.ignored`, no
`transcript.final`: it would otherwise open a new turn and interrupt the answer after all
(the dialogue treats any new input as an interruption).

Echo: unless the client cancels it itself, the assistant's own voice is taken out of the
inbound audio before the VAD hears it (`actors.asr.echo`), so it neither opens utterances
nor barges in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from actors.asr.echo import EchoRemover, wanted
from actors.asr.engine import AsrError, Recognition
from actors.asr.overlap import Overlap, has_words
from actors.asr.vad import Boundary, Segmenter, SpeechAudio, SpeechStart, SpeechStop
from actors.base import Context
from actors.watch import Watch
from audio.decode import AudioDecodeError, Decoder
from audio.encode import DEFAULT_OUT
from bus.blobs import put_pcm
from bus.client import Message, Subscription
from bus.subjects import audio_in, audio_out
from schemas import (
    AudioParams,
    BlobRef,
    Error,
    Event,
    ListenStarted,
    ListenStopped,
    SessionEnded,
    SessionStarted,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TranscriptPartial,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    new_id,
)
from telemetry import tracing

if TYPE_CHECKING:
    from actors.asr.actor import Asr

log = logging.getLogger("vagent.asr")

STEERING = frozenset({"listen.started", "listen.stopped", "tts.started", "tts.stopped",
                      "turn.interrupted", "session.ended"})
ERROR_EVERY_S = 5.0  # at most one bad-audio error event per session this often
IDLE_S = 12 * 3600.0  # a session silent this long is dropped: its edge vanished without session.ended

@dataclass
class _Utterance:
    started: SpeechStarted
    audio_start_ms: int
    audio: bytearray
    recognition: Recognition | None = None
    barged_in: bool = False  # it paused the assistant's turn
    over: str | None = None  # the assistant's turn it was heard over
    closed: bool = False  # no partials after the final
    partials: set[asyncio.Task[None]] = field(default_factory=set)


class SessionPipeline:
    def __init__(self, actor: Asr, started: SessionStarted) -> None:
        self.actor = actor
        self.bus = actor.bus
        self.engine = actor.engine
        self.settings = actor.settings
        self.rules = actor.settings.rules(None)  # the assistant's, once read (in _run)
        self.started = started
        # Ids follow from session.started and a per-session count, so a second pass over the
        # same audio re-emits the same ids; no delivery: each effect starts a trace of its own.
        self.ctx = Context(actor, started)
        self.session_id = started.session_id
        self.params = started.audio_in or AudioParams()
        # Inbound frames with their arrival time (monotonic): it places them against the
        # assistant's audio for the echo canceller.
        self.queue: asyncio.Queue[tuple[str, tuple[bytes, float] | Event]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self._frames: Subscription | None = None
        self._echo: EchoRemover | None = None  # the assistant's voice to take out, if any
        self._echo_frames: Subscription | None = None
        self._watch: Watch | None = None
        self._cause = started.id  # the latest listen.started, else session.started
        self._decoder: Decoder | None = None  # made on the first frame: text sessions need none
        self._segmenter: Segmenter | None = None
        self._utterance: _Utterance | None = None
        self._manual = False  # push to talk: listen.stopped, not silence, ends an utterance
        self._speaking: TtsStarted | None = None  # the assistant's audio is playing
        self._finals: asyncio.Task[None] | None = None  # the latest utterance still transcribing
        self._bad_audio = 0
        self._bad_audio_reported = 0.0
        self.overlap = self._overlap()

    def _overlap(self) -> Overlap:
        return Overlap(self.ctx, self.session_id, self.rules.backchannels,
                       self.rules.false_interruption_timeout_ms)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._frames = await self.bus.subscribe(audio_in(self.session_id), self._on_audio)
        self._watch = await Watch(self.bus, STEERING, self._on_event,
                                  session_id=self.session_id).start()
        self.task = asyncio.create_task(self._run(), name=f"asr:{self.session_id}")

    async def stop(self) -> None:
        await self._unsubscribe()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self._drop_utterance()
        if self._finals is not None:
            self._finals.cancel()
        self.overlap.close()

    async def _on_audio(self, msg: Message) -> None:
        self.queue.put_nowait(("audio", (msg.data, time.monotonic())))

    async def _on_event(self, event: Event) -> None:
        self.queue.put_nowait(("event", event))

    async def _unsubscribe(self) -> None:
        audio, self._frames = self._frames, None
        watch, self._watch = self._watch, None
        echo, self._echo_frames = self._echo_frames, None
        for sub in (audio, echo):
            if sub is not None:
                await sub.stop()
        if watch is not None:
            await watch.stop()

    async def _run(self) -> None:
        try:
            # Audio waits in the queue meanwhile: nothing said while the engine loads is lost.
            self.engine = await self.actor.engine_for(self.started)
            self.rules = await self.actor.rules_for(self.started)
            self.overlap = self._overlap()
            await self._listen_for_echo()
            while True:
                try:
                    # Not wait_for: on Python 3.11 it can swallow the cancellation stop()
                    # sends, and this loop would read on.
                    async with asyncio.timeout(IDLE_S):
                        kind, item = await self.queue.get()
                except TimeoutError:
                    log.info("asr session idle, dropped", extra={"session": self.session_id})
                    return
                try:
                    if kind == "audio":
                        assert isinstance(item, tuple)
                        await self._audio(*item)
                    elif isinstance(item, SessionEnded):
                        return
                    elif isinstance(item, Event):
                        await self._steer(item)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # one bad step must not end the session's ASR
                    log.exception("asr pipeline step failed", extra={"session": self.session_id})
                    await self._error("asr_failed", f"{type(exc).__name__}: {exc}", retryable=True)
        finally:
            await self._drop_utterance()
            await self._unsubscribe()
            self.overlap.close()

    # --- audio ------------------------------------------------------------------------

    async def _listen_for_echo(self) -> None:
        """Hear the assistant's outbound audio, the echo's reference, if its echo must go."""
        if not wanted(self.rules.echo, self.started.echo_cancelled):
            return
        echo = self._echo = EchoRemover(self.started.audio_out or DEFAULT_OUT)

        async def played(msg: Message) -> None:
            echo.played(msg.data, time.monotonic())

        self._echo_frames = await self.bus.subscribe(audio_out(self.session_id), played)

    async def _audio(self, payload: bytes, arrived: float) -> None:
        if self._decoder is None:
            try:
                self._decoder = Decoder(self.params.format, self.params.sample_rate,
                                        self.params.channels)
            except AudioDecodeError as exc:
                await self._reject_audio(exc)
                return
            self._segmenter = Segmenter(
                self.settings.vad, ender=await self.actor.ender_for(self.rules, self.session_id))
            self._segmenter.manual = self._manual
        try:
            boundaries = await asyncio.to_thread(self._decode_and_segment, payload, arrived)
        except AudioDecodeError as exc:
            await self._reject_audio(exc)
            return
        for boundary in boundaries:
            await self._boundary(boundary)
        await self._maybe_barge_in()

    def _decode_and_segment(self, payload: bytes, arrived: float) -> list[Boundary]:
        """On a worker thread: Opus decoding, echo cancelling and silero are CPU work."""
        assert self._decoder is not None and self._segmenter is not None
        pcm = self._decoder.decode(payload)
        if self._echo is not None:
            pcm = self._echo.cancel(pcm, arrived)
        return self._segmenter.feed(pcm)

    async def _boundary(self, boundary: Boundary) -> None:
        if isinstance(boundary, SpeechStart):
            await self._speech_started(boundary)
        elif isinstance(boundary, SpeechAudio):
            if self._utterance is not None:
                self._utterance.audio += boundary.audio
                if self._utterance.recognition is not None:
                    self._utterance.recognition.feed(boundary.audio)
        elif isinstance(boundary, SpeechStop):
            await self._speech_stopped(boundary)

    async def _speech_started(self, start: SpeechStart) -> None:
        event = self.ctx.stamp(SpeechStarted(session_id=self.session_id, audio_ms=start.start_ms),
                               causation_id=self._cause)
        await self.ctx.publish(event)
        utterance = _Utterance(event, start.audio_start_ms, bytearray(start.audio))
        self._utterance = utterance
        try:
            utterance.recognition = await self.engine.start(
                lambda text: self._partial(utterance, text))
        except Exception as exc:
            await self._error("asr_unavailable", f"{self.engine.provider}: {exc}", retryable=True)
            return
        utterance.recognition.feed(start.audio)

    async def _speech_stopped(self, stop: SpeechStop) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return
        await self._maybe_barge_in(utterance, stop.stop_ms - stop.start_ms)
        # The engine starts on its final text while the audio is stored.
        recognition = utterance.recognition
        final_text = (asyncio.create_task(recognition.finish()) if recognition is not None
                      else None)
        stopped_id = self.ctx.next_id()
        final_id = self.ctx.next_id()  # reserved now, so ids do not depend on timing
        name = f"{self.session_id}/in/{utterance.started.id}.pcm"
        blob: BlobRef | None = None
        try:
            blob = await put_pcm(self.bus, name, bytes(utterance.audio))
        except Exception as exc:  # the transcript matters more than the recording
            await self._error("audio_not_stored", f"{type(exc).__name__}: {exc}", retryable=True)
        stopped = self.ctx.stamp(SpeechStopped(session_id=self.session_id, audio_ms=stop.stop_ms,
                                               duration_ms=stop.stop_ms - stop.start_ms, audio=blob,
                                               end=stop.end),
                                 id=stopped_id, causation_id=utterance.started.id)
        await self.ctx.publish(stopped)
        if utterance.over is None and self._speaking is not None:
            utterance.over = self._speaking.turn_id or self._speaking.id
        previous = self._finals
        self._finals = asyncio.create_task(
            self._final(utterance, stopped, final_id, final_text, previous))

    async def _final(self, utterance: _Utterance, stopped: SpeechStopped, final_id: str,
                     final_text: asyncio.Task[str] | None,
                     previous: asyncio.Task[None] | None) -> None:
        try:
            text = ""
            if final_text is not None:
                try:
                    text = await final_text
                except AsrError as exc:
                    await self._error("asr_failed", str(exc), retryable=True)
            utterance.closed = True
            if previous is not None:  # finals in utterance order, whatever the engine's timing
                with contextlib.suppress(BaseException):
                    await previous
            if utterance.over is not None:  # over the assistant: its words decide
                if not await self.overlap.settle(utterance.started.id, utterance.over, text,
                                                 stopped.duration_ms):
                    return
            elif not has_words(text):
                log.info("utterance without a turn", extra={"session": self.session_id,
                                                             "text": text})
                return
            # A voice turn's trace starts here (audio frames carry none): speech → transcript.
            heard = tracing.record("asr utterance", None, utterance.started.ts, attributes={
                "vagent.session_id": self.session_id, "vagent.asr.provider": self.engine.provider,
                "vagent.asr.speech_ms": stopped.duration_ms,
            }) if tracing.enabled() else None
            await self.ctx.emit(TranscriptFinal(
                session_id=self.session_id, text=text,
                language=self.engine.language, provider=self.engine.provider,
                audio=stopped.audio, speech_started_ts=utterance.started.ts,
                speech_stopped_ts=stopped.ts), id=final_id, causation_id=stopped.id,
                traceparent=heard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("transcript.final failed", extra={"session": self.session_id})
            await self._error("asr_failed", f"{type(exc).__name__}: {exc}", retryable=True)

    def _partial(self, utterance: _Utterance, text: str) -> None:
        if utterance.closed:
            return
        event = TranscriptPartial(id=new_id(), session_id=self.session_id, text=text)
        task = asyncio.create_task(self.ctx.live(event, causation_id=utterance.started.id))
        utterance.partials.add(task)
        task.add_done_callback(utterance.partials.discard)
        if utterance.barged_in:  # words heard so far may already make it an interruption
            decided = asyncio.create_task(self.overlap.partial(utterance.started.id, text))
            utterance.partials.add(decided)
            decided.add_done_callback(utterance.partials.discard)

    async def _maybe_barge_in(self, utterance: _Utterance | None = None,
                              speech_ms: int | None = None) -> None:
        utterance = utterance or self._utterance
        if utterance is None or utterance.barged_in or self._speaking is None:
            return
        if speech_ms is None:
            assert self._segmenter is not None
            speech_ms = self._segmenter.speech_ms
        if speech_ms < self.rules.barge_in_min_ms:
            return
        over = self._speaking.turn_id or self._speaking.id
        if self.overlap.interrupted(over):
            return
        utterance.barged_in = True
        utterance.over = over
        await self.overlap.pause(utterance.over, utterance.started.id, utterance.started.audio_ms)

    async def _drop_utterance(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is not None and utterance.recognition is not None:
            utterance.closed = True
            with contextlib.suppress(Exception):
                await utterance.recognition.cancel()

    # --- steering events --------------------------------------------------------------

    async def _steer(self, event: Event) -> None:
        if isinstance(event, ListenStarted):
            self._cause = event.id
            self._manual = event.mode == "manual"
            if self._segmenter is not None:
                self._segmenter.manual = self._manual
        elif isinstance(event, ListenStopped):
            # No more audio is coming for this utterance, whatever the mode.
            if self._segmenter is not None:
                for boundary in self._segmenter.end():
                    await self._boundary(boundary)
            self._manual = False
            if self._segmenter is not None:
                self._segmenter.manual = False
        elif isinstance(event, TtsStarted):
            self._speaking = event
        elif isinstance(event, TtsStopped | TurnInterrupted):
            if self._speaking is not None and event.turn_id in (None, self._speaking.turn_id):
                self._speaking = None
            self.overlap.stopped(event.turn_id)

    # --- errors -----------------------------------------------------------------------

    async def _reject_audio(self, exc: AudioDecodeError) -> None:
        self._bad_audio += 1
        now = time.monotonic()
        if now - self._bad_audio_reported < ERROR_EVERY_S:
            return
        count, self._bad_audio = self._bad_audio, 0
        self._bad_audio_reported = now
        more = f" ({count} bad frames since the last report)" if count > 1 else ""
        await self._error("bad_audio", f"{exc}{more}")

    async def _error(self, code: str, message: str, *, retryable: bool = False) -> None:
        with contextlib.suppress(Exception):  # reporting must not fail the pipeline
            await self.ctx.emit(Error(session_id=self.session_id, code=code, message=message,
                                      retryable=retryable, source=self.actor.name),
                                causation_id=self._cause)

