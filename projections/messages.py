"""The `messages` read model: a session's conversation as chat messages, in log order.

- `user.text` and `transcript.final` (with words) → role `user`; their turn is themselves.
- `assistant.message` with text → role `assistant` (a greeting too: its turn is named after
  `session.started`); an interrupted answer keeps what was produced.
- `tool.call` → role `assistant` with `tool_name`, `tool_call_id`, the arguments as text;
  `tool.result` → role `tool` with the result as text.
"""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.base import Projection
from projections.bulk import upsert
from schemas import AssistantMessage, Event, ToolCall, ToolResult, TranscriptFinal, UserText

COLUMNS = "message_id, session_id, turn_id, seq, role, text, tool_name, tool_call_id, ts"
COLUMN_TYPES = tuple((c, {"seq": "BIGINT", "ts": "BIGINT"}.get(c, "VARCHAR")) for c in COLUMNS.split(", "))


class Messages(Projection):
    name: ClassVar[str] = "messages"
    streams: ClassVar[tuple[str, ...]] = ("SESSIONS",)
    tables: ClassVar[tuple[str, ...]] = ("messages",)
    version: ClassVar[int] = 1
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS messages (
            message_id VARCHAR PRIMARY KEY,   -- the event's id
            session_id VARCHAR NOT NULL,
            turn_id VARCHAR,
            seq BIGINT NOT NULL,              -- SESSIONS sequence of the event
            role VARCHAR NOT NULL,            -- 'user' | 'assistant' | 'tool'
            text VARCHAR NOT NULL,
            tool_name VARCHAR,
            tool_call_id VARCHAR,
            ts BIGINT NOT NULL
        )
    """

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, object]] = {}

    def apply(self, db: duckdb.DuckDBPyConnection, event: Event, entry: Entry) -> None:
        match event:
            case UserText() | TranscriptFinal() if event.text.strip():
                row: tuple[str, str, str | None, str | None, str | None] = (
                    "user", event.text, event.id, None, None)
            case AssistantMessage() if event.text:
                row = ("assistant", event.text, event.turn_id, None, None)
            case ToolCall():
                row = ("assistant", event.arguments, event.turn_id, event.name, event.call_id)
            case ToolResult():
                row = ("tool", event.content, event.turn_id, event.name, event.call_id)
            case _:
                return
        role, text, turn_id, tool_name, call_id = row
        self._pending.setdefault(event.id, {
            "message_id": event.id, "session_id": event.session_id, "turn_id": turn_id,
            "seq": entry.seq, "role": role, "text": text, "tool_name": tool_name,
            "tool_call_id": call_id, "ts": event.ts})

    def flush(self, db: duckdb.DuckDBPyConnection) -> None:
        pending, self._pending = self._pending, {}
        upsert(db, "messages", COLUMN_TYPES, pending.values(), replace=False)  # a message is written once

    def reset(self) -> None:
        self._pending = {}

    def queries(self) -> dict[str, str]:
        return {
            "session_messages": f"SELECT {COLUMNS} FROM messages WHERE session_id = $session_id ORDER BY seq",
        }
