"""A session's end cuts its running answer at once: a client that hangs up mid-answer (here a
closed `/ws`) stops the LLM's stream (its HTTP request closed) and the speech, the turn is
recorded as interrupted (`turn.interrupted` reason `session_ended`), the read models say so,
and the session can still be replayed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from bus.client import Message
from bus.log import load
from bus.subjects import audio_out, session_events, session_live
from devservers.echo_llm import OpenAIServer
from projections.client import run_query
from replay.engine import replay_session
from schemas import (
    AssistantDelta,
    AssistantMessage,
    AssistantSentence,
    DecodeError,
    Event,
    SessionEnded,
    TtsSentence,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    decode,
)
from settings.config import Config
from tests.api_harness import Api
from tests.conftest import wait_for
from tests.test_ws import ws_url

# The echoed answer streams one word per TOKEN_DELAY: ~200 words, ~10 s, so the session
# ends while the model still writes and the voice still speaks.
TOKEN_DELAY = 0.05
QUESTION = " ".join(f"Sentence {i} is here." for i in range(50))
# After the session's end, a stopped answer and voice emit nothing: what was already on its way
# (a frame being sent, a sentence being published) must be done within this.
WITHIN_NS = 200_000_000
# tts.stopped comes once the turn's recording is stored (with its reference): a bound far
# below the ~10 s the rest of the answer would have spoken.
STOPPED_NS = 5_000_000_000


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[OpenAIServer]:
    server = OpenAIServer(token_delay=TOKEN_DELAY).start()
    yield server
    server.stop()


pytestmark = pytest.mark.stack("dialogue", "tts", llm="slow_llm")


async def test_a_hang_up_mid_answer_stops_the_answer_and_its_speech_at_once(
        stack: Api, slow_llm: OpenAIServer, llm: OpenAIServer, tmp_path: Path) -> None:
    bus = stack.services.bus
    streams = len(slow_llm.streams)
    deltas: list[AssistantDelta] = []
    frames: list[int] = []  # arrival times (ns) of the session's audio frames
    ended_at: list[int] = []  # arrival time of session.ended, by the same way as the frames

    async def on_live(msg: Message) -> None:
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        if isinstance(event, AssistantDelta):
            deltas.append(event)

    async def on_audio(_: Message) -> None:
        frames.append(time.time_ns())

    async def on_event(msg: Message) -> None:
        if msg.subject.endswith(".session.ended"):
            ended_at.append(time.time_ns())

    async with websockets.connect(ws_url(stack)) as ws:
        sid = json.loads(await ws.recv())["session_id"]
        subs = [await bus.subscribe(session_live(sid), on_live),
                await bus.subscribe(audio_out(sid), on_audio),
                await bus.subscribe(session_events(sid), on_event)]
        await ws.send(json.dumps({"type": "user.text", "text": QUESTION}))
        # Speaking, with the answer still streaming.
        await wait_for(bus, sid, lambda events: any(isinstance(e, TtsStarted) for e in events), 60)
        assert len(slow_llm.streams) == streams  # the answer is not done yet
    try:
        def settled(events: list[Event]) -> bool:
            return (any(isinstance(e, AssistantMessage) and e.interrupted for e in events)
                    and any(isinstance(e, TtsStopped) for e in events))

        await wait_for(bus, sid, settled, 30)
        # The LLM's request was closed by the dialogue, not read to its end.
        async with asyncio.timeout(10):
            while len(slow_llm.streams) == streams:
                await asyncio.sleep(0.02)
        assert slow_llm.streams[streams:] == ["aborted"]
        await asyncio.sleep(0.5)  # anything still on its way would be stored by now
    finally:
        for sub in subs:
            await sub.stop()

    entries, _ = await load(bus, "session", sid)
    events = [e.event for e in entries if e.event is not None]
    ended = next(e for e in events if isinstance(e, SessionEnded))
    assert ended.reason == "client_closed"
    turn_id = next(e.turn_id for e in events if isinstance(e, TtsStarted))
    after = [e for e in events if e.ts > ended.ts]
    # No speech begins after the end, and what was speaking stops within the bound.
    assert not [e for e in after if isinstance(e, TtsStarted)], after
    assert not [e for e in after if isinstance(e, TtsSentence | AssistantSentence)
                and e.ts > ended.ts + WITHIN_NS], after
    stopped = [e for e in events if isinstance(e, TtsStopped)]
    assert len(stopped) == 1 and stopped[0].ts - ended.ts <= STOPPED_NS, (stopped, ended)
    assert frames and ended_at and all(at <= ended_at[0] + WITHIN_NS for at in frames)
    assert deltas and all(d.ts <= ended.ts + WITHIN_NS for d in deltas)
    # The turn is closed once, as interrupted, with what was produced, and says why.
    closing = [e for e in events if isinstance(e, AssistantMessage) and e.turn_id == turn_id]
    assert len(closing) == 1 and closing[0].interrupted
    produced = "".join(d.text for d in sorted(deltas, key=lambda d: d.index))
    assert closing[0].text == produced and 0 < len(produced) < len(f"You said: {QUESTION}.")
    interrupted = [e for e in events if isinstance(e, TurnInterrupted)]
    assert [(e.turn_id, e.reason) for e in interrupted] == [(turn_id, "session_ended")]

    # The read models agree.
    columns, rows = await run_query(bus, None, "session_turns", {"session_id": sid}, fresh=True)
    turn = dict(zip(columns, rows[0], strict=True))
    assert len(rows) == 1 and turn["turn_id"] == turn_id
    assert (turn["interrupted"], turn["interrupt_reason"]) == (True, "session_ended")
    assert turn["answer_text"] == produced
    columns, rows = await run_query(bus, None, "session_messages", {"session_id": sid}, fresh=True)
    said = [dict(zip(columns, r, strict=True)) for r in rows]
    assert [(m["role"], m["text"]) for m in said] == [("user", QUESTION), ("assistant", produced)]

    # The session replays: its one input, answered in full this time.
    report = await replay_session(bus, sid, config=Config(), llm_base_url=llm.base_url, tts=False,
                                  timeout=60)
    assert len(report.turns) == 1
    diff = report.turns[0]
    assert diff.original.interrupted and diff.original.answer == produced
    assert not diff.replay.interrupted and diff.replay.answer == f"You said: {QUESTION}."
