"""The ASR actor: a session's inbound audio becomes speech boundaries and transcripts.

It consumes `session.started` through its durable consumer, so each session goes to
exactly one worker: that delivery is the claim (DESIGN §3: one session's frames are
never spread over workers). The worker then subscribes to the session's `audio.in`
and runs the session's pipeline (`actors.asr.session`) until `session.ended`; the
handler itself returns at once, so the consumer acks and moves on.

Models load once in `setup()`: moonshine tiny-en (or a Deepgram client when a key is
configured) for every session, and one small silero state per session.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

from actors.asr.engine import Engine, make_engine
from actors.asr.session import SessionPipeline
from actors.asr.settings import AsrSettings
from actors.base import Actor, Context
from schemas import Event, SessionStarted

log = logging.getLogger("vagent.asr")


class Asr(Actor):
    name: ClassVar[str] = "asr"
    consumes: ClassVar[tuple[str, ...]] = ("session.started",)
    emits: ClassVar[frozenset[str]] = frozenset({
        "speech.started", "speech.stopped", "transcript.final", "turn.interrupted", "error"})
    concurrency: ClassVar[int] = 64

    settings: AsrSettings
    engine: Engine

    async def setup(self) -> None:
        self.settings = AsrSettings.from_env()
        self.engine = make_engine(self.settings)
        await self.engine.load()
        self.sessions: dict[str, SessionPipeline] = {}
        log.info("asr ready", extra={"engine": self.engine.provider})

    async def teardown(self) -> None:
        pipelines, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(p.stop() for p in pipelines), return_exceptions=True)
        await self.engine.close()

    async def handle(self, event: Event, ctx: Context) -> None:
        if not isinstance(event, SessionStarted):
            return
        sid = event.session_id
        if sid in self.sessions:
            return  # a redelivery of a session this worker already runs
        pipeline = SessionPipeline(self, event)
        self.sessions[sid] = pipeline
        await pipeline.start()
        assert pipeline.task is not None

        def forget(_: asyncio.Task[None]) -> None:
            if self.sessions.get(sid) is pipeline:
                del self.sessions[sid]

        pipeline.task.add_done_callback(forget)
