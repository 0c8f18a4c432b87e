"""The session read models (sessions, turns, messages): what they fold from a session with
voice turns, tool calls and interruptions; identical after a rebuild from an empty
directory; exactly once when the projection service is killed mid-stream."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from bus.client import Bus
from bus.errors import BusError
from bus.log import load
from bus.subjects import query as query_subject
from projections.registry import PROJECTIONS
from projections.runtime import ProjectionService, rebuild, store_path
from projections.store import ReadStore
from schemas import (
    AssistantMessage,
    AssistantSentence,
    BlobRef,
    Error,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    ToolCallRef,
    ToolResult,
    TranscriptFinal,
    TtsSentence,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnStarted,
    Usage,
    UserRegistered,
    UserText,
    new_id,
)
from tests.procs import Proc

MS = 1_000_000


def rich_session(sid: str, user_id: str | None = None, base: int = 1_700_000_000_000 * MS
                 ) -> list[SessionEvent]:
    """A session as the actors record it: a greeting, a typed turn with a tool call, a voice
    turn the user barges in on, a typed turn interrupted by the next input, an error, the end."""
    def at(ms: int) -> int:
        return base + ms * MS

    started = SessionStarted(session_id=sid, transport="test", user_id=user_id, assistant_id="a1",
                             device_id="aa:bb", ts=at(0))
    q1 = UserText(session_id=sid, text="what time is it?", ts=at(1000))
    speech = SpeechStarted(session_id=sid, ts=at(3000), audio_ms=2500)
    stopped = SpeechStopped(session_id=sid, ts=at(4000), audio_ms=3500, duration_ms=1000,
                            audio=BlobRef(bucket="audio", name=f"{sid}/in/x.pcm", duration_ms=1200))
    q2 = TranscriptFinal(session_id=sid, text="tell me a story", ts=at(4150), audio=stopped.audio,
                         speech_started_ts=speech.ts, speech_stopped_ts=stopped.ts, provider="moonshine")
    q3 = UserText(session_id=sid, text="and another one", ts=at(8000))
    q4 = UserText(session_id=sid, text="no, stop", ts=at(8300))
    return [
        started,
        AssistantSentence(session_id=sid, turn_id=started.id, text="Hi!", ts=at(10)),
        AssistantMessage(session_id=sid, turn_id=started.id, text="Hi!", provider="vagent", ts=at(11)),
        q1,
        TurnStarted(session_id=sid, turn_id=q1.id, input_id=q1.id, ts=at(1002)),
        AssistantMessage(session_id=sid, turn_id=q1.id, text="", provider="echo", model="m",
                         usage=Usage(prompt_tokens=10, completion_tokens=2), ts=at(1100),
                         tool_calls=[ToolCallRef(call_id="c1", name="get_time")]),
        ToolCall(session_id=sid, turn_id=q1.id, call_id="c1", name="get_time", ts=at(1101)),
        ToolResult(session_id=sid, turn_id=q1.id, call_id="c1", name="get_time", content="12:00",
                   ts=at(1120)),
        AssistantSentence(session_id=sid, turn_id=q1.id, text="It is noon.", ttfs_ms=90, ts=at(1200)),
        AssistantMessage(session_id=sid, turn_id=q1.id, text="It is noon.", provider="echo", model="m",
                         usage=Usage(prompt_tokens=20, completion_tokens=4), ttft_ms=60.0,
                         ts=at(1210)),
        TtsStarted(session_id=sid, turn_id=q1.id, ts=at(1330)),
        TtsSentence(session_id=sid, turn_id=q1.id, text="It is noon.", duration_ms=900, ts=at(1331)),
        TtsStopped(session_id=sid, turn_id=q1.id, spoken_ms=900, ts=at(2300),
                   audio=BlobRef(bucket="audio", name=f"{sid}/out/{q1.id}.pcm", sample_rate=22050,
                                 duration_ms=900)),
        speech, stopped, q2,
        TurnStarted(session_id=sid, turn_id=q2.id, input_id=q2.id, ts=at(4152)),
        AssistantSentence(session_id=sid, turn_id=q2.id, text="Once upon a time,", ts=at(4400)),
        TtsStarted(session_id=sid, turn_id=q2.id, ts=at(4600)),
        TurnInterrupted(session_id=sid, turn_id=q2.id, reason="barge_in", ts=at(5500)),
        AssistantMessage(session_id=sid, turn_id=q2.id, text="Once upon a time, a", interrupted=True,
                         ts=at(5510)),
        TtsStopped(session_id=sid, turn_id=q2.id, spoken_ms=800, ts=at(5520)),
        q3,
        TurnStarted(session_id=sid, turn_id=q3.id, input_id=q3.id, ts=at(8001)),
        q4,
        AssistantMessage(session_id=sid, turn_id=q3.id, text="", interrupted=True, ts=at(8302)),
        TurnInterrupted(session_id=sid, turn_id=q3.id, reason="new_input", ts=at(8303)),
        TurnStarted(session_id=sid, turn_id=q4.id, input_id=q4.id, ts=at(8304)),
        Error(session_id=sid, turn_id=q4.id, code="llm_unavailable", message="down", ts=at(8400)),
        SessionEnded(session_id=sid, reason="user_exit", ts=at(9000)),
    ]


async def publish_all(bus: Bus, events: list[SessionEvent]) -> None:
    for event in events:
        await bus.publish(event)


def rows(store: ReadStore, query: str, **params: Any) -> list[dict[str, Any]]:
    sql = next(p().queries()[query] for p in PROJECTIONS if query in p().queries())
    columns, data = store.query(sql, params)
    return [dict(zip(columns, r, strict=True)) for r in data]


async def test_a_session_folds_into_sessions_turns_and_messages(bus: Bus, tmp_path: Path) -> None:
    uid, sid = new_id(), "rm" + new_id()
    await bus.publish(UserRegistered(user_id=uid, email=f"{uid.lower()}@example.com"))
    events = rich_session(sid, uid)
    await publish_all(bus, events)
    projections = [cls() for cls in PROJECTIONS]
    store = ReadStore(tmp_path / "r.duckdb", projections)
    users, _ = await load(bus, "user", uid)
    entries, _ = await load(bus, "session", sid)
    for projection in projections:
        if "USERS" in projection.streams:
            store.apply(projection, "USERS", users)
        if "SESSIONS" in projection.streams:
            store.apply(projection, "SESSIONS", entries)
    q1, q2, q3, q4 = (e for e in events if isinstance(e, UserText | TranscriptFinal))

    [session] = rows(store, "user_session", session_id=sid, user_id=uid)
    assert session["started_ts"] == events[0].ts and session["ended_ts"] == events[-1].ts
    assert (session["user_id"], session["assistant_id"], session["device_id"], session["transport"],
            session["end_reason"], session["turns"], session["events"]) == (
        uid, "a1", "aa:bb", "test", "user_exit", 4, len(events))
    assert session["last_assistant_text"] == "Once upon a time, a"
    assert rows(store, "user_session", session_id=sid, user_id="someone else") == []
    assert [r["session_id"] for r in rows(store, "user_sessions", user_id=uid, after="", limit=10)] == [sid]
    assert rows(store, "user_sessions", user_id=uid, after=sid, limit=10) == []

    turns = rows(store, "session_turns", session_id=sid)
    assert [t["turn_id"] for t in turns] == [q1.id, q2.id, q3.id, q4.id]  # not the greeting
    typed, voice, cut, last = turns
    assert typed["input_type"] == "user.text" and typed["input_text"] == "what time is it?"
    assert (typed["first_sentence_ts"] - typed["turn_started_ts"]) // MS == 198
    assert (typed["first_audio_ts"] - typed["turn_started_ts"]) // MS == 328
    assert typed["first_delta_ms"] == 60.0 and typed["tool_calls"] == 1
    assert (typed["prompt_tokens"], typed["completion_tokens"]) == (30, 6)
    assert (typed["provider"], typed["model"], typed["answer_text"]) == ("echo", "m", "It is noon.")
    assert typed["interrupted"] is False and typed["speech_stopped_ts"] is None
    assert typed["tts_stopped_ts"] - typed["first_audio_ts"] == 970 * MS
    assert voice["input_type"] == "transcript.final" and voice["input_text"] == "tell me a story"
    assert (voice["transcript_final_ts"] - voice["speech_stopped_ts"]) // MS == 150
    assert (voice["first_audio_ts"] - voice["speech_stopped_ts"]) // MS == 600
    assert voice["speech_started_ts"] == q2.speech_started_ts
    assert (voice["interrupted"], voice["interrupt_reason"]) == (True, "barge_in")
    assert voice["answer_text"] == "Once upon a time, a" and voice["answer_ts"] is not None
    assert (cut["interrupted"], cut["interrupt_reason"], cut["answer_text"]) == (True, "new_input", "")
    assert last["answer_ts"] is None and last["interrupted"] is False  # the LLM failed: no answer

    messages = rows(store, "session_messages", session_id=sid)
    assert [(m["role"], m["text"], m["tool_name"]) for m in messages] == [
        ("assistant", "Hi!", None),
        ("user", "what time is it?", None),
        ("assistant", "{}", "get_time"),
        ("tool", "12:00", "get_time"),
        ("assistant", "It is noon.", None),
        ("user", "tell me a story", None),
        ("assistant", "Once upon a time, a", None),
        ("user", "and another one", None),
        ("user", "no, stop", None),
    ]
    assert messages[1]["turn_id"] == q1.id and messages[2]["tool_call_id"] == "c1"
    assert [m["seq"] for m in messages] == sorted(m["seq"] for m in messages)

    [listed] = rows(store, "sessions_table", user=f"{uid.lower()}@EXAMPLE.com", assistant_id=None,
                    since=None, limit=10)
    assert listed["session_id"] == sid and listed["email"] == f"{uid.lower()}@example.com"
    # first sentence after the end of the input: 198 ms (typed), 400 ms (voice), none after
    assert listed["p50_first_sentence_ms"] == pytest.approx(299, abs=1)
    assert listed["p50_first_audio_ms"] == pytest.approx((328 + 600) / 2, abs=1)
    assert rows(store, "sessions_table", user=None, assistant_id="other", since=None, limit=10) == []
    assert rows(store, "sessions_table", user=uid, assistant_id="a1", since=events[-1].ts, limit=10) == []
    store.close()


async def test_rebuild_from_an_empty_directory_gives_identical_session_tables(
        bus: Bus, data_dir: Path, tmp_path: Path) -> None:
    for _ in range(3):
        await publish_all(bus, rich_session("rb" + new_id(), new_id()))
    service = ProjectionService(bus, data_dir)
    await service.start()
    await service.caught_up()
    await service.stop()
    empty = tmp_path / "empty"
    empty.mkdir()
    counts = await rebuild(bus, store_path(empty))
    live = ReadStore(store_path(data_dir), [], read_only=True)
    fresh = ReadStore(store_path(empty), [], read_only=True)
    try:
        for table in ("sessions", "turns", "messages"):
            assert live.table(table) == fresh.table(table)
            assert counts[table] == len(fresh.table(table)) > 0
        assert live.table("_checkpoints") == fresh.table("_checkpoints")
    finally:
        live.close()
        fresh.close()


SESSIONS, PER_SESSION = 24, 400  # 9,600 events


async def _events(bus: Bus, sid: str) -> int | None:
    """The session's event count in the running service's read model (None: no row yet, or
    the service does not answer)."""
    try:
        answer = json.loads(await bus.request(query_subject("session"),
                                              json.dumps({"session_id": sid}).encode(), timeout=10))
    except BusError:
        return None
    return answer["rows"][0][9] if answer.get("rows") else None


@pytest.mark.slow
async def test_a_projection_killed_mid_stream_resumes_exactly_once(module_nats: Any, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    # A server of its own: a large stream here must not slow other tests' projections.
    bus = await Bus.connect(module_nats.url, name="test-kill")
    await bus.declare()
    try:
        await _killed_mid_stream(bus, module_nats.url, data_dir, tmp_path)
    finally:
        await bus.close()


async def _killed_mid_stream(bus: Bus, url: str, data_dir: Path, tmp_path: Path) -> None:
    ids = [f"kx{i:03d}" + new_id() for i in range(SESSIONS)]
    for sid in ids:  # many small turns per session, stored a batch at a time
        batch: list[SessionEvent] = [SessionStarted(session_id=sid, transport="test")]
        while len(batch) < PER_SESSION - 2:
            q = UserText(session_id=sid, text=f"q{len(batch)}")
            batch += [q, TurnStarted(session_id=sid, turn_id=q.id),
                      AssistantMessage(session_id=sid, turn_id=q.id, text="a", ttft_ms=1.0)]
        batch.append(SessionEnded(session_id=sid))
        await bus.append_batch(batch)
    total = {sid: (await load(bus, "session", sid))[0] for sid in ids}

    args = ["projections", "serve", "--nats", url, "--data-dir", str(data_dir)]
    serve = Proc(args)
    try:
        serve.wait_for("vagent projections: serving")
        async with asyncio.timeout(60):  # until it is part way through our sessions
            while (await _events(bus, ids[SESSIONS // 4])) is None:
                await asyncio.sleep(0.01)
        partial = await _events(bus, ids[-1])
        serve.kill()  # SIGKILL: mid-batch, no chance to clean up
        assert partial is None or partial < len(total[ids[-1]])  # it was killed part way
        serve = Proc(args)
        serve.wait_for("vagent projections: serving")
        async with asyncio.timeout(90):
            while (await _events(bus, ids[-1])) != len(total[ids[-1]]):
                await asyncio.sleep(0.1)
        for sid in ids:
            assert await _events(bus, sid) == len(total[sid])
    finally:
        assert serve.stop(signal.SIGINT) == 0 or serve.proc.returncode is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    await rebuild(bus, store_path(empty))
    live = ReadStore(store_path(data_dir), [], read_only=True)
    fresh = ReadStore(store_path(empty), [], read_only=True)
    try:
        for cls in PROJECTIONS:
            for table in cls.tables:
                assert live.table(table) == fresh.table(table), table
        assert live.table("_checkpoints") == fresh.table("_checkpoints")
        # nothing applied twice: every turn counted once
        assert live.db.execute("SELECT sum(turns) FROM sessions WHERE session_id LIKE 'kx%'").fetchone() == (
            sum(sum(1 for e in entries if isinstance(e.event, TurnStarted)) for entries in total.values()),)
    finally:
        live.close()
        fresh.close()
