"""The ASR actor: a session's inbound audio becomes speech boundaries and transcripts.

It consumes `session.started` through its durable consumer, so each session goes to
exactly one worker: that delivery is the claim (DESIGN §3: one session's frames are
never spread over workers). The worker then subscribes to the session's `audio.in`
and runs the session's pipeline (`actors.asr.session`) until `session.ended`; the
handler itself returns at once, so the consumer acks and moves on.

Models load once in `setup()`: moonshine tiny-en (or a Deepgram client when a key is
configured) for every session, and one small silero state per session. A session whose
assistant names another engine (its `asr` setting) is transcribed by that one, loaded
the first time it is wanted and shared by every session that wants it; so is whisper,
for assistants whose language is `zh` or `auto` (actors.asr.language). Servers by URL
(`[[asr.providers]]`, the `openai` engine) hear every language: when they are the default
engine every session goes to them, told its language, and an assistant may pick one of
them by name (tried first, the others its fallback).

The turn model (actors.asr.turn_model), which ends utterances by meaning, loads the first
time a session's rules want it and serves every session; without it silence ends them.

A worker hears at most `[asr] max_sessions` sessions at once. A full worker does not claim a
new session: it puts it back (`NotNow`) to be offered again, to any worker, every RETRY_S;
the first time, it records `session.queued`. The worker that finally claims it records
`session.admitted` (how long it waited); one that finds it waiting past `[asr] max_queue_ms`
records `session.refused` (reason `busy`) instead, and the session's edge ends it. Waiting
sessions are offered in no strict order: a new one may take a place before an older one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from typing import ClassVar

from actors.asr.endpoint import Ender, ModelEnd, SilenceEnd
from actors.asr.engine import Engine, Multilingual, make_engine
from actors.asr.engine_whisper import WhisperEngine
from actors.asr.language import FirstUtteranceLanguage
from actors.asr.session import SessionPipeline
from actors.asr.settings import CHAIN, AsrSettings, TurnRules
from actors.asr.turn_model import TurnModel
from actors.assistant import AssistantDirectory
from actors.base import Actor, Context
from bus.consumer import ConsumerSpec, NotNow
from domain.language import session_language
from schemas import (
    Event,
    SessionAdmitted,
    SessionQueued,
    SessionRefused,
    SessionStarted,
    derived_id,
)

log = logging.getLogger("vagent.asr")
MANDARIN = "whisper"  # the engine of assistants whose language is zh
RETRY_S = 0.5  # a waiting session is offered to the workers again this often
MIN_RETRY_AFTER_S = 5  # what a refused client is told to wait, at least


class Asr(Actor):
    name: ClassVar[str] = "asr"
    consumes: ClassVar[tuple[str, ...]] = ("session.started",)
    emits: ClassVar[frozenset[str]] = frozenset({
        "speech.started", "speech.stopped", "transcript.final", "turn.interrupted", "turn.paused",
        "turn.resumed", "speech.ignored", "error", "session.queued", "session.admitted",
        "session.refused"})
    concurrency: ClassVar[int] = 64

    settings: AsrSettings
    engine: Engine

    async def setup(self) -> None:
        self.settings = AsrSettings.from_config(self.config.asr, self.data_dir)
        self.engine = make_engine(self.settings)
        await self.engine.load()
        self.engines: dict[str, Engine] = {}  # assistants' own choices
        self._loading = asyncio.Lock()
        self.assistants = AssistantDirectory(self.bus, self.data_dir)
        self.sessions: dict[str, SessionPipeline] = {}
        self._turn_model: TurnModel | None = None
        self._turn_model_failed = False
        self._turn_model_loading = asyncio.Lock()
        self._waiting: dict[str, int] = {}  # sessions this worker put back: their start (ns)
        log.info("asr ready", extra={"engine": self.engine.provider,
                                     "max_sessions": self.settings.max_sessions})

    def consumer_spec(self) -> ConsumerSpec:
        # A waiting session is delivered again every RETRY_S: room for that many deliveries
        # (twice over) besides the usual ones.
        waits = math.ceil(max(0, self.config.asr.max_queue_ms) / 1000 / RETRY_S)
        spec = super().consumer_spec()
        return dataclasses.replace(spec, max_deliver=spec.max_deliver + 2 * waits)

    async def teardown(self) -> None:
        pipelines, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(p.stop() for p in pipelines), return_exceptions=True)
        await self.engine.close()
        for engine in self.engines.values():
            await engine.close()

    async def engine_for(self, started: SessionStarted) -> Engine:
        """The session's engine: its assistant's own choice (`asr`), else by its language
        (`zh`: whisper; `auto`: whichever the first utterance's language wants; `en`: the
        default), unless the default is multilingual. The default one when the assistant
        cannot be read or its engine loaded. A multilingual engine is told the language."""
        try:
            profile = await self.assistants.for_events([started])
        except Exception as exc:  # the session is heard all the same, by the default engine
            log.warning("assistant not read: using the default ASR engine",
                        extra={"session": started.session_id, "error": repr(exc)})
            return self._speaking(self.engine, started.language, None)
        if profile is None:
            return self._speaking(self.engine, started.language, None)
        language = session_language(profile.language, profile.assistant_id, started.language)
        if profile.asr is not None:
            return self._speaking(await self._shared(profile.asr, profile.assistant_id),
                                  language, profile.asr)
        if isinstance(self.engine, Multilingual):
            return self._speaking(self.engine, language, None)
        if language == "zh":
            return await self._shared(MANDARIN, profile.assistant_id)
        if language == "auto":
            whisper = await self._shared(MANDARIN, profile.assistant_id)
            if not isinstance(whisper, WhisperEngine):
                return self.engine
            return FirstUtteranceLanguage({"zh": whisper, "en": self.engine}, whisper.detect_async,
                                          started.session_id)
        return self.engine

    async def rules_for(self, started: SessionStarted) -> TurnRules:
        """The session's turn-taking: its assistant's `turn` settings over `[asr.turn]`
        (those alone when the assistant cannot be read)."""
        try:
            profile = await self.assistants.for_events([started])
        except Exception:  # engine_for has logged it
            profile = None
        return self.settings.rules(profile.turn if profile is not None else None)

    async def ender_for(self, rules: TurnRules, session_id: str) -> Ender:
        """What ends the session's utterances: the turn model (loaded the first time a
        session wants it), or silence alone, also when the model cannot be loaded."""
        silence = SilenceEnd(self.settings.vad.silence_ms)
        if rules.detector != "smart_turn":
            return silence
        model = await self.turn_model()
        if model is None:
            return silence
        return ModelEnd(model, complete_hold_ms=rules.complete_hold_ms,
                        incomplete_max_ms=rules.incomplete_max_ms, threshold=rules.threshold,
                        fallback=silence, session_id=session_id)

    async def turn_model(self) -> TurnModel | None:
        async with self._turn_model_loading:
            if self._turn_model is None and not self._turn_model_failed:
                try:
                    self._turn_model = await asyncio.to_thread(TurnModel)
                except Exception as exc:
                    self._turn_model_failed = True  # one warning, not one per session
                    log.warning("turn model not loaded: silence ends every utterance",
                                extra={"error": repr(exc)})
        return self._turn_model

    def _speaking(self, engine: Engine, language: str | None, picked: str | None) -> Engine:
        """A multilingual engine's view for one session (its language, the assistant's
        provider); any other engine as it is."""
        if not isinstance(engine, Multilingual):
            return engine
        prefer = picked if picked is not None and self.settings.chain_member(picked) else None
        return engine.speaking(language if language in ("zh", "en") else None, prefer)

    async def _shared(self, name: str, assistant_id: str) -> Engine:
        """The named engine, loaded the first time a session wants it (so a stack whose
        sessions are all English never loads whisper); the default one if it cannot load.
        A provider of `[[asr.providers]]` is their chain's."""
        if self.settings.chain_member(name):
            name = CHAIN
        if name == self.engine.provider:
            return self.engine
        async with self._loading:  # two sessions at once load a model once
            if name not in self.engines:
                try:
                    engine = make_engine(self.settings, name)
                    await engine.load()
                except Exception as exc:
                    log.error("cannot load the assistant's ASR engine: using the default",
                              extra={"assistant_id": assistant_id, "asr": name, "error": str(exc)})
                    return self.engine
                self.engines[name] = engine
        return self.engines[name]

    async def handle(self, event: Event, ctx: Context) -> None:
        if not isinstance(event, SessionStarted):
            return
        sid = event.session_id
        if sid in self.sessions:
            return  # a redelivery of a session this worker already runs
        waited_ms = max(0, (time.time_ns() - event.ts) // 1_000_000)
        delivered = ctx.delivery.num_delivered if ctx.delivery is not None else 1
        limit = self.settings.max_sessions
        if limit is not None and len(self.sessions) >= limit:
            await self._wait(event, ctx, delivered, waited_ms)
            return
        self._waiting.pop(sid, None)
        pipeline = SessionPipeline(self, event)
        self.sessions[sid] = pipeline  # the place is taken before the first await
        try:
            if delivered > 1:  # it was put back: it waited
                await ctx.emit(SessionAdmitted(session_id=sid, queued_ms=waited_ms),
                               id=self._queue_id(event, 1))
                log.info("session admitted", extra={"session": sid, "queued_ms": waited_ms})
            await pipeline.start()
        except BaseException:
            del self.sessions[sid]  # the place is given back: the session is offered again
            await pipeline.stop()
            raise
        assert pipeline.task is not None

        def forget(_: asyncio.Task[None]) -> None:
            if self.sessions.get(sid) is pipeline:
                del self.sessions[sid]

        pipeline.task.add_done_callback(forget)

    async def _wait(self, started: SessionStarted, ctx: Context, delivered: int,
                    waited_ms: int) -> None:
        """A session this full worker cannot take: refused once it waited `max_queue_ms`,
        else put back (NotNow), recorded as queued the first time."""
        sid = started.session_id
        max_wait = self.settings.max_queue_ms
        if waited_ms >= max_wait:
            self._waiting.pop(sid, None)
            retry_after = max(MIN_RETRY_AFTER_S, math.ceil(max_wait / 1000))
            await ctx.emit(SessionRefused(session_id=sid, reason="busy", retry_after_s=retry_after,
                                          queued_ms=waited_ms), id=self._queue_id(started, 2))
            log.warning("session refused: every ASR worker is full",
                        extra={"session": sid, "queued_ms": waited_ms,
                               "max_sessions": self.settings.max_sessions})
            return
        horizon = time.time_ns() - (max_wait + 10_000) * 1_000_000
        self._waiting = {k: ts for k, ts in self._waiting.items() if ts > horizon}
        self._waiting[sid] = started.ts
        if delivered == 1:
            position = sum(1 for ts in self._waiting.values() if ts <= started.ts)
            await ctx.emit(SessionQueued(session_id=sid, position=position, max_wait_ms=max_wait),
                           id=self._queue_id(started, 0))
            log.info("session queued: this ASR worker is full",
                     extra={"session": sid, "position": position,
                            "max_sessions": self.settings.max_sessions})
        raise NotNow(RETRY_S)

    def _queue_id(self, started: SessionStarted, index: int) -> str:
        """The id of a session's queued (0), admitted (1) or refused (2) event: the same from
        any worker, apart from the ids its pipeline's events take."""
        return derived_id(started.id, f"{self.name}.queue", index)
