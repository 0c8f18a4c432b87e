"""The `sessions` read model: one row per session, from its event log."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.bulk import Folded, Row, fetch
from schemas import (
    AssistantMessage,
    Error,
    Event,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SpeechStopped,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    TurnStarted,
)

COLUMNS = ("session_id, user_id, assistant_id, device_id, transport, started_ts, ended_ts, end_reason, "
           "turns, events, last_assistant_text, first_event_ts, last_event_ts, last_seq, audio_in_ms, "
           "audio_out_ms, errors, asr_provider, tts_provider")

# Per session, over its turns (the `turns` read model): the median time from the end of the
# user's input (end of speech for a voice turn, the turn's start for a typed one) to the
# answer's first sentence and to its first audio, in ms.
_LATENCY = """
    SELECT session_id,
           median((first_sentence_ts - coalesce(speech_stopped_ts, turn_started_ts)) / 1e6)
               AS p50_first_sentence_ms,
           median((first_audio_ts - coalesce(speech_stopped_ts, turn_started_ts)) / 1e6)
               AS p50_first_audio_ms
    FROM turns WHERE turn_started_ts IS NOT NULL GROUP BY session_id
"""


class Sessions(Folded):
    name: ClassVar[str] = "sessions"
    streams: ClassVar[tuple[str, ...]] = ("SESSIONS",)
    tables: ClassVar[tuple[str, ...]] = ("sessions",)
    table: ClassVar[str] = "sessions"
    key: ClassVar[str] = "session_id"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("session_id", "VARCHAR"), ("user_id", "VARCHAR"), ("assistant_id", "VARCHAR"),
        ("device_id", "VARCHAR"), ("transport", "VARCHAR"), ("started_ts", "BIGINT"),
        ("ended_ts", "BIGINT"), ("end_reason", "VARCHAR"), ("turns", "INTEGER"), ("events", "INTEGER"),
        ("last_assistant_text", "VARCHAR"), ("first_event_ts", "BIGINT"), ("last_event_ts", "BIGINT"),
        ("last_seq", "BIGINT"), ("audio_in_ms", "BIGINT"), ("audio_out_ms", "BIGINT"),
        ("errors", "INTEGER"), ("asr_provider", "VARCHAR"), ("tts_provider", "VARCHAR"))
    version: ClassVar[int] = 4
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS sessions (
            session_id VARCHAR PRIMARY KEY,
            user_id VARCHAR,                  -- from session.started: the owner, if any
            assistant_id VARCHAR,
            device_id VARCHAR,
            transport VARCHAR,
            started_ts BIGINT,                -- the first session.started (ns since the epoch)
            ended_ts BIGINT,                  -- session.ended; NULL while open (a later start reopens)
            end_reason VARCHAR,
            turns INTEGER NOT NULL,           -- turn.started events
            events INTEGER NOT NULL,          -- stored events of the session
            last_assistant_text VARCHAR,      -- the latest non-empty assistant.message
            first_event_ts BIGINT NOT NULL,   -- ns since the epoch, from the events
            last_event_ts BIGINT NOT NULL,
            last_seq BIGINT NOT NULL,         -- SESSIONS sequence of the last event applied
            audio_in_ms BIGINT NOT NULL,      -- speech heard: speech.stopped duration_ms, summed
            audio_out_ms BIGINT NOT NULL,     -- speech spoken: tts.stopped spoken_ms, summed
            errors INTEGER NOT NULL,          -- error events
            asr_provider VARCHAR,             -- the latest transcript.final's provider
            tts_provider VARCHAR              -- the latest tts.started's provider
        )
    """

    def wants(self, event: Event) -> bool:
        return isinstance(event, SessionEvent)

    def load(self, db: duckdb.DuckDBPyConnection, pending: list[tuple[Event, Entry]]) -> list[Row]:
        ids = sorted({e.aggregate_id for e, _ in pending})
        return fetch(db, f"SELECT {COLUMNS} FROM sessions WHERE session_id IN (SELECT unnest($ids))",
                     {"ids": ids})

    def fold(self, rows: dict[str, Row], event: Event, entry: Entry) -> set[str]:
        sid = event.aggregate_id
        row = rows.get(sid)
        if row is None:
            row = rows[sid] = self.blank(session_id=sid, turns=0, events=0, first_event_ts=event.ts,
                                         last_event_ts=event.ts, audio_in_ms=0, audio_out_ms=0, errors=0)
        row["events"] += 1
        row["first_event_ts"] = min(row["first_event_ts"], event.ts)
        row["last_event_ts"] = max(row["last_event_ts"], event.ts)
        row["last_seq"] = entry.seq
        match event:
            case SessionStarted():
                for name in ("user_id", "assistant_id", "device_id", "transport"):
                    row[name] = getattr(event, name) or row[name]
                row["started_ts"] = min(row["started_ts"] or event.ts, event.ts)
                if row["ended_ts"] is not None and event.ts > row["ended_ts"]:
                    row["ended_ts"] = row["end_reason"] = None  # a client came back: open again
            case SessionEnded():
                row["ended_ts"], row["end_reason"] = event.ts, event.reason
            case TurnStarted():
                row["turns"] += 1
            case AssistantMessage() if event.text:
                row["last_assistant_text"] = event.text
            case SpeechStopped():
                row["audio_in_ms"] += event.duration_ms
            case TtsStopped():
                row["audio_out_ms"] += event.spoken_ms
            case Error():
                row["errors"] += 1
            case TranscriptFinal() if event.provider:
                row["asr_provider"] = event.provider
            case TtsStarted() if event.provider:
                row["tts_provider"] = event.provider
        return {sid}

    def queries(self) -> dict[str, str]:
        return {
            # The most recently active sessions, in brief (its columns are a stable contract).
            "sessions": """
                SELECT session_id, first_event_ts, last_event_ts, events, turns, last_assistant_text
                FROM sessions ORDER BY last_event_ts DESC LIMIT $limit
            """,
            # `vagent sessions`: newest first, each filter NULL for "any"; the owner's email
            # (users read model), the assistant's name (assistants) and the median latencies
            # (turns) joined in.
            "sessions_table": f"""
                SELECT {", ".join("s." + c for c in COLUMNS.split(", "))}, u.email,
                       a.name AS assistant_name, l.p50_first_sentence_ms, l.p50_first_audio_ms
                FROM sessions s
                LEFT JOIN users u ON u.user_id = s.user_id
                LEFT JOIN assistants a ON a.assistant_id = s.assistant_id
                LEFT JOIN ({_LATENCY}) l ON l.session_id = s.session_id
                WHERE ($user IS NULL OR s.user_id = $user OR lower(u.email) = lower($user))
                  AND ($assistant_id IS NULL OR s.assistant_id = $assistant_id)
                  AND ($since IS NULL OR coalesce(s.started_ts, s.first_event_ts) >= $since)
                ORDER BY coalesce(s.started_ts, s.first_event_ts) DESC, s.session_id LIMIT $limit
            """,
            # The API: a user's own sessions, paged by id.
            "user_sessions": f"""
                SELECT {COLUMNS} FROM sessions
                WHERE user_id = $user_id AND session_id > $after
                ORDER BY session_id LIMIT $limit
            """,
            # The same, newest first (ids are ULIDs: by id is by start): the page's history.
            "user_sessions_newest": f"""
                SELECT {COLUMNS} FROM sessions
                WHERE user_id = $user_id AND ($after = '' OR session_id < $after)
                ORDER BY session_id DESC LIMIT $limit
            """,
            "user_session": f"""
                SELECT {COLUMNS} FROM sessions WHERE session_id = $session_id AND user_id = $user_id
            """,
            "session": f"SELECT {COLUMNS} FROM sessions WHERE session_id = $session_id",
        }
