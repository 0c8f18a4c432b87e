"""The `turns` read model: one row per user input that opened a turn, with the timestamp of
every stage it went through, so each latency of the pipeline can be derived:

    end of speech → transcript       transcript_final_ts - speech_stopped_ts
    input → first sentence           first_sentence_ts - coalesce(speech_stopped_ts, turn_started_ts)
    input → first audio              first_audio_ts - coalesce(speech_stopped_ts, turn_started_ts)
    user.text → first delta          first_delta_ms + (turn_started_ts - input_ts), typed turns

A turn is named after its input (`user.text` or `transcript.final`): the dialogue's events of
the turn carry that id as their `turn_id`. Every timestamp is an event's `ts` (ns since the
epoch) except `first_delta_ms`, the LLM's time to first token as the dialogue measured it.
"""

from __future__ import annotations

from typing import ClassVar

import duckdb

from bus.log import Entry
from projections.analytics import QUERIES as ANALYTICS
from projections.bulk import Folded, Row, fetch
from schemas import (
    AssistantMessage,
    AssistantSentence,
    Event,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnStarted,
    UserText,
)

COLUMNS = ("turn_id, session_id, seq_start, input_type, input_text, speech_started_ts, "
           "speech_stopped_ts, transcript_final_ts, turn_started_ts, first_delta_ms, "
           "first_sentence_ts, first_audio_ts, answer_ts, tts_stopped_ts, interrupted, "
           "interrupt_reason, answer_text, provider, model, prompt_tokens, completion_tokens, tool_calls, "
           "input_ts")
TURN_EVENTS = (UserText, TranscriptFinal, TurnStarted, AssistantSentence, TtsStarted, TtsStopped,
               AssistantMessage, TurnInterrupted)
OPEN = "turn_started_ts IS NOT NULL AND answer_ts IS NULL"
_TYPES = {"seq_start": "BIGINT", "first_delta_ms": "DOUBLE", "interrupted": "BOOLEAN",
          "prompt_tokens": "INTEGER", "completion_tokens": "INTEGER", "tool_calls": "INTEGER"}


class Turns(Folded):
    name: ClassVar[str] = "turns"
    streams: ClassVar[tuple[str, ...]] = ("SESSIONS",)
    tables: ClassVar[tuple[str, ...]] = ("turns",)
    table: ClassVar[str] = "turns"
    key: ClassVar[str] = "turn_id"
    columns: ClassVar[tuple[tuple[str, str], ...]] = tuple(
        (c, _TYPES.get(c, "BIGINT" if c.endswith("_ts") else "VARCHAR")) for c in COLUMNS.split(", "))
    version: ClassVar[int] = 2
    ddl: ClassVar[str] = """
        CREATE TABLE IF NOT EXISTS turns (
            turn_id VARCHAR PRIMARY KEY,      -- the input event's id
            session_id VARCHAR NOT NULL,
            seq_start BIGINT NOT NULL,        -- SESSIONS sequence of the input
            input_type VARCHAR NOT NULL,      -- 'user.text' | 'transcript.final'
            input_text VARCHAR NOT NULL,
            speech_started_ts BIGINT,         -- voice turns: from the transcript.final
            speech_stopped_ts BIGINT,
            transcript_final_ts BIGINT,
            turn_started_ts BIGINT,           -- NULL: the input opened no turn (yet)
            first_delta_ms DOUBLE,            -- the LLM's time to first token (assistant.message ttft_ms)
            first_sentence_ts BIGINT,
            first_audio_ts BIGINT,            -- tts.started
            answer_ts BIGINT,                 -- the final assistant.message (not a tool-call step)
            tts_stopped_ts BIGINT,
            interrupted BOOLEAN NOT NULL,
            interrupt_reason VARCHAR,         -- barge_in | abort | new_input | session_ended
            answer_text VARCHAR,
            provider VARCHAR,
            model VARCHAR,
            prompt_tokens INTEGER NOT NULL,   -- summed over the turn's LLM steps
            completion_tokens INTEGER NOT NULL,
            tool_calls INTEGER NOT NULL,
            input_ts BIGINT NOT NULL          -- the input event's ts
        )
    """

    def wants(self, event: Event) -> bool:
        return isinstance(event, TURN_EVENTS)

    def load(self, db: duckdb.DuckDBPyConnection, pending: list[tuple[Event, Entry]]) -> list[Row]:
        ids = sorted({getattr(e, "turn_id", None) or "" for e, _ in pending})
        aborted = sorted({e.session_id for e, _ in pending
                          if isinstance(e, TurnInterrupted) and e.turn_id is None})
        return fetch(db, f"""
            SELECT {COLUMNS} FROM turns WHERE turn_id IN (SELECT unnest($ids))
               OR (session_id IN (SELECT unnest($aborted::VARCHAR[])) AND {OPEN})
        """, {"ids": ids, "aborted": aborted})

    def fold(self, rows: dict[str, Row], event: Event, entry: Entry) -> set[str]:
        if isinstance(event, UserText | TranscriptFinal):
            if not event.text.strip() or event.id in rows:
                return set()  # an empty input opens no turn
            voice = isinstance(event, TranscriptFinal)
            rows[event.id] = self.blank(
                turn_id=event.id, session_id=event.session_id, seq_start=entry.seq, input_ts=event.ts,
                input_type=event.type, input_text=event.text, interrupted=False, prompt_tokens=0,
                completion_tokens=0, tool_calls=0,
                speech_started_ts=event.speech_started_ts if isinstance(event, TranscriptFinal) else None,
                speech_stopped_ts=event.speech_stopped_ts if isinstance(event, TranscriptFinal) else None,
                transcript_final_ts=event.ts if voice else None)
            return {event.id}
        if isinstance(event, TurnInterrupted) and event.turn_id is None:
            # A client's abort of whatever is under way: the session's unanswered turns.
            hit = {k for k, r in rows.items() if r["session_id"] == event.session_id
                   and r["turn_started_ts"] is not None and r["answer_ts"] is None}
            for key in hit:
                rows[key]["interrupted"] = True
                rows[key]["interrupt_reason"] = rows[key]["interrupt_reason"] or event.reason
            return hit
        row = rows.get(getattr(event, "turn_id", None) or "")
        if row is None:
            return set()  # not part of a turn (a greeting is named after session.started)
        ts = event.ts
        match event:
            case TurnStarted():
                row["turn_started_ts"] = row["turn_started_ts"] or ts
            case AssistantSentence():
                row["first_sentence_ts"] = min(row["first_sentence_ts"] or ts, ts)
            case TtsStarted():
                row["first_audio_ts"] = min(row["first_audio_ts"] or ts, ts)
            case TtsStopped():
                row["tts_stopped_ts"] = max(row["tts_stopped_ts"] or ts, ts)
            case AssistantMessage():
                if row["first_delta_ms"] is None:
                    row["first_delta_ms"] = event.ttft_ms
                row["prompt_tokens"] += event.usage.prompt_tokens
                row["completion_tokens"] += event.usage.completion_tokens
                row["tool_calls"] += len(event.tool_calls)
                row["provider"] = event.provider or row["provider"]
                row["model"] = event.model or row["model"]
                row["interrupted"] = row["interrupted"] or event.interrupted
                if not event.tool_calls:  # the final answer, not a step that calls tools
                    row["answer_ts"], row["answer_text"] = ts, event.text
            case TurnInterrupted():
                row["interrupted"] = True
                row["interrupt_reason"] = row["interrupt_reason"] or event.reason
        return {row["turn_id"]}

    def queries(self) -> dict[str, str]:
        return {
            "session_turns": f"SELECT {COLUMNS} FROM turns WHERE session_id = $session_id ORDER BY seq_start",
            **ANALYTICS,
        }
