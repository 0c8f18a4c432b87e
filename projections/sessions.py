"""The `sessions` read model: one row per session, from its event log."""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.base import Projection
from schemas import AssistantMessage, Event, SessionStarted, TurnStarted


class Sessions(Projection):
    name: ClassVar[str] = "sessions"
    streams: ClassVar[tuple[str, ...]] = ("SESSIONS",)
    tables: ClassVar[tuple[str, ...]] = ("sessions",)
    version: ClassVar[int] = 2
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS sessions (
            session_id VARCHAR PRIMARY KEY,
            user_id VARCHAR,                  -- from session.started: the owner, if any
            assistant_id VARCHAR,
            device_id VARCHAR,
            transport VARCHAR,
            first_event_ts BIGINT NOT NULL,   -- ns since the epoch, from the events
            last_event_ts BIGINT NOT NULL,
            events INTEGER NOT NULL,
            turns INTEGER NOT NULL,
            last_assistant_text VARCHAR,
            last_seq BIGINT NOT NULL          -- SESSIONS sequence of the last event applied
        )
    """

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        turn = 1 if isinstance(event, TurnStarted) else 0
        text = event.text if isinstance(event, AssistantMessage) else None
        started = event if isinstance(event, SessionStarted) else None
        db.execute(
            """
            INSERT INTO sessions VALUES ($sid, $uid, $aid, $did, $transport, $ts, $ts, 1, $turn, $text, $seq)
            ON CONFLICT (session_id) DO UPDATE SET
                user_id = coalesce(excluded.user_id, user_id),
                assistant_id = coalesce(excluded.assistant_id, assistant_id),
                device_id = coalesce(excluded.device_id, device_id),
                transport = coalesce(excluded.transport, transport),
                first_event_ts = least(first_event_ts, excluded.first_event_ts),
                last_event_ts = greatest(last_event_ts, excluded.last_event_ts),
                events = events + 1,
                turns = turns + excluded.turns,
                last_assistant_text = coalesce(excluded.last_assistant_text, last_assistant_text),
                last_seq = excluded.last_seq
            """,
            {"sid": event.aggregate_id, "ts": event.ts, "turn": turn, "text": text, "seq": entry.seq,
             "uid": started.user_id if started else None,
             "aid": started.assistant_id if started else None,
             "did": started.device_id if started else None,
             "transport": started.transport if started else None},
        )

    def queries(self) -> dict[str, str]:
        return {
            "sessions": """
                SELECT session_id, first_event_ts, last_event_ts, events, turns,
                       last_assistant_text
                FROM sessions ORDER BY last_event_ts DESC LIMIT $limit
            """,
        }
