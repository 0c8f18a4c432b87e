"""/api/v1/sessions: the caller's own sessions, their messages and their turns with the
latency of each stage, from the read models (sessions, messages, turns)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from edge.api.endpoint import Call, Endpoint, QueryParam, json_response
from edge.api.models import (
    Message,
    MessagePage,
    Session,
    SessionPage,
    Turn,
    TurnLatencies,
    TurnPage,
)
from edge.api.pages import PAGE_PARAMS, iso, page, page_rows
from edge.errors import ApiError, not_found

ORDERS = {"oldest": "user_sessions", "newest": "user_sessions_newest"}
ORDER_PARAM = QueryParam("order", "`oldest` first (by start) or `newest` first",
                         {"type": "string", "enum": list(ORDERS), "default": "oldest"})


def optional_iso(ns: int | None) -> str | None:
    return iso(ns) if ns else None


def session_body(row: dict[str, Any]) -> Session:
    return Session(session_id=row["session_id"], assistant_id=row["assistant_id"],
                   device_id=row["device_id"], transport=row["transport"],
                   started_at=optional_iso(row["started_ts"]), ended_at=optional_iso(row["ended_ts"]),
                   end_reason=row["end_reason"], turns=row["turns"], events=row["events"],
                   last_answer=row["last_assistant_text"], last_event_at=iso(row["last_event_ts"]))


def message_body(row: dict[str, Any]) -> Message:
    return Message(message_id=row["message_id"], turn_id=row["turn_id"], role=row["role"],
                   text=row["text"], tool_name=row["tool_name"], tool_call_id=row["tool_call_id"],
                   at=iso(row["ts"]))


def _ms(later: int | None, earlier: int | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier) / 1e6, 1)


def turn_body(row: dict[str, Any]) -> Turn:
    voice = row["input_type"] == "transcript.final"
    # The end of the user's input: the end of speech, or for a typed turn, its start.
    end = row["speech_stopped_ts"] if row["speech_stopped_ts"] is not None else row["turn_started_ts"]
    first_token = row["first_delta_ms"]
    latencies = TurnLatencies(
        transcript_ms=_ms(row["transcript_final_ts"], row["speech_stopped_ts"]),
        first_token_ms=None if first_token is None else round(float(first_token), 1),
        first_sentence_ms=_ms(row["first_sentence_ts"], end),
        first_audio_ms=_ms(row["first_audio_ts"], end),
        answer_ms=_ms(row["answer_ts"], end),
    )
    return Turn(turn_id=row["turn_id"], input="voice" if voice else "text", input_text=row["input_text"],
                answer_text=row["answer_text"], interrupted=bool(row["interrupted"]),
                interrupt_reason=row["interrupt_reason"], provider=row["provider"], model=row["model"],
                prompt_tokens=row["prompt_tokens"] or 0, completion_tokens=row["completion_tokens"] or 0,
                tool_calls=row["tool_calls"] or 0,
                speech_started_at=optional_iso(row["speech_started_ts"]),
                speech_stopped_at=optional_iso(row["speech_stopped_ts"]),
                transcript_at=optional_iso(row["transcript_final_ts"]),
                started_at=optional_iso(row["turn_started_ts"]),
                first_sentence_at=optional_iso(row["first_sentence_ts"]),
                first_audio_at=optional_iso(row["first_audio_ts"]),
                answered_at=optional_iso(row["answer_ts"]), latencies=latencies)


async def own_session(call: Call) -> dict[str, Any]:
    """The session's row if it is the caller's; 404 otherwise (also for someone else's)."""
    session_id = call.params["session_id"]
    rows = await call.services.query("user_session", session_id=session_id, user_id=call.user_id)
    if not rows:
        raise not_found("session", session_id)
    return rows[0]


async def list_sessions(call: Call) -> Response:
    order = call.query_param("order") or "oldest"
    if order not in ORDERS:
        raise ApiError(422, "validation_failed", f"order must be one of {', '.join(ORDERS)}",
                       {"at": "order"})
    items, cursor = await page(call, ORDERS[order], "session_id", session_body, user_id=call.user_id)
    return json_response(SessionPage(items=items, next_cursor=cursor))


async def get_session(call: Call) -> Response:
    return json_response(session_body(await own_session(call)))


async def list_session_messages(call: Call) -> Response:
    session = await own_session(call)
    rows = await call.services.query("session_messages", session_id=session["session_id"])
    items, cursor = page_rows(call, rows, "message_id", message_body)
    return json_response(MessagePage(items=items, next_cursor=cursor))


async def list_session_turns(call: Call) -> Response:
    session = await own_session(call)
    rows = await call.services.query("session_turns", session_id=session["session_id"])
    items, cursor = page_rows(call, rows, "turn_id", turn_body)
    return json_response(TurnPage(items=items, next_cursor=cursor))


ENDPOINTS = (
    Endpoint("GET", "/api/v1/sessions", list_sessions, "Your sessions, a page at a time", "sessions",
             answer=SessionPage, query=(*PAGE_PARAMS, ORDER_PARAM)),
    Endpoint("GET", "/api/v1/sessions/{session_id}", get_session, "One of your sessions", "sessions",
             answer=Session, errors=(404,)),
    Endpoint("GET", "/api/v1/sessions/{session_id}/messages", list_session_messages,
             "A session's conversation: user, assistant and tool messages in order", "sessions",
             answer=MessagePage, query=PAGE_PARAMS, errors=(404,)),
    Endpoint("GET", "/api/v1/sessions/{session_id}/turns", list_session_turns,
             "A session's turns with the time each stage took", "sessions", answer=TurnPage,
             query=PAGE_PARAMS, errors=(404,)),
)
