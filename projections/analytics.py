"""Usage, latency and cost over a time window, grouped by day, user, assistant, model or
transport: the read models' sessions and turns summed, their stage latencies as percentiles,
and their cost priced from `[[prices]]`. The CLI (`vagent stats`) and the API
(`GET /api/v1/analytics`) both answer with `report()`.

What belongs to a group: a session by its start (UTC day, owner, assistant, transport, and
for `model` the model of its latest answer); a turn by its session, except for `model`,
where each turn counts under the model that answered it. Sessions count when they started
within the window, with all their turns.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from settings.config import PriceConfig
from telemetry.prices import Prices

By = Literal["day", "assistant", "model", "user", "transport"]
BY: tuple[str, ...] = ("day", "assistant", "model", "user", "transport")
# Each stage's latency in ms, as the turns read model gives it (projections/turns.py).
STAGES: tuple[str, ...] = ("transcript", "first_token", "first_sentence", "first_audio", "first_delta")
PERCENTILES = (0.5, 0.9, 0.99)
DEFAULT_SINCE = "7d"
NS = 1_000_000_000

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
SINCE_HINT = "use e.g. 30m, 24h, 7d, 2025-01-31 or 2025-01-31T09:00"
# What an API client may send as `since` (its OpenAPI pattern): a subset parse_since takes.
SINCE_PATTERN = (r"^([0-9]{1,6}(\.[0-9]{1,3})?[smhdw]|[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
                 r"(T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_since(text: str | None, now: float | None = None, tz: dt.tzinfo | None = None) -> int | None:
    """'30m', '2h', '7d', '1w' ago, or a date / ISO time, as ns since the epoch. A date or
    time without a zone is in `tz` (None: the local zone)."""
    if not text:
        return None
    text = text.strip()
    match = _SINCE.match(text)
    if match:
        base = time.time() if now is None else now
        return int((base - float(match[1]) * _UNIT[match[2]]) * 1e9)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since {text!r} is not a time: {SINCE_HINT}") from None
    if when.tzinfo is None and tz is not None:
        when = when.replace(tzinfo=tz)
    return int(when.timestamp() * 1e9)


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- the read queries (served by the turns projection) ----------------------------------

# The sessions in the window (and of $user, an id or an email, unless NULL), each with its
# group's key and the name shown for it.
_KEYED = """
    WITH session_model AS (
        SELECT session_id, arg_max(model, seq_start) AS model
        FROM turns WHERE model IS NOT NULL GROUP BY session_id
    ), scoped AS (
        SELECT s.session_id, s.user_id, s.assistant_id, s.transport, s.audio_in_ms, s.audio_out_ms,
               s.errors, s.asr_provider, s.tts_provider, m.model AS session_model, u.email,
               a.name AS assistant_name, coalesce(s.started_ts, s.first_event_ts) AS start_ts
        FROM sessions s
        LEFT JOIN session_model m ON m.session_id = s.session_id
        LEFT JOIN users u ON u.user_id = s.user_id
        LEFT JOIN assistants a ON a.assistant_id = s.assistant_id
        WHERE coalesce(s.started_ts, s.first_event_ts) >= $since
          AND coalesce(s.started_ts, s.first_event_ts) < $until
          AND ($user IS NULL OR s.user_id = $user OR lower(u.email) = lower($user))
    ), keyed AS (
        SELECT *,
               CASE $by WHEN 'day' THEN strftime(make_timestamp(start_ts // 1000), '%Y-%m-%d')
                        WHEN 'user' THEN coalesce(user_id, '')
                        WHEN 'assistant' THEN coalesce(assistant_id, '')
                        WHEN 'model' THEN coalesce(session_model, '')
                        ELSE coalesce(transport, '') END AS key,
               CASE $by WHEN 'user' THEN email WHEN 'assistant' THEN assistant_name END AS name
        FROM scoped
    )
"""
# A turn's key: its session's, or with `model`, its own model's.
_TURN_KEY = "CASE WHEN $by = 'model' THEN coalesce(t.model, '') ELSE k.key END"
_END = "coalesce(t.speech_stopped_ts, t.turn_started_ts)"  # the end of the user's input
_STAGE_SQL = {
    "transcript": "(t.transcript_final_ts - t.speech_stopped_ts) / 1e6",
    "first_token": "t.first_delta_ms",
    "first_sentence": f"(t.first_sentence_ts - {_END}) / 1e6",
    "first_audio": f"(t.first_audio_ts - {_END}) / 1e6",
    "first_delta": "CASE WHEN t.input_type = 'user.text' "
                   "THEN t.first_delta_ms + (t.turn_started_ts - t.input_ts) / 1e6 END",
}
_QUANTILES = "[" + ", ".join(str(p) for p in PERCENTILES) + "]"

QUERIES: dict[str, str] = {
    "analytics_sessions": f"""{_KEYED}
        SELECT key, max(name) AS name, asr_provider, tts_provider, count(*) AS sessions,
               sum(audio_in_ms)::BIGINT AS audio_in_ms, sum(audio_out_ms)::BIGINT AS audio_out_ms,
               sum(errors)::BIGINT AS errors
        FROM keyed GROUP BY key, asr_provider, tts_provider ORDER BY key
    """,
    "analytics_turns": f"""{_KEYED}
        SELECT {_TURN_KEY} AS key, t.provider, t.model,
               count(*) FILTER (WHERE t.turn_started_ts IS NOT NULL) AS turns,
               sum(t.prompt_tokens)::BIGINT AS prompt_tokens,
               sum(t.completion_tokens)::BIGINT AS completion_tokens,
               count(*) FILTER (WHERE t.interrupted) AS interruptions,
               sum(t.tool_calls)::BIGINT AS tool_calls
        FROM turns t JOIN keyed k ON k.session_id = t.session_id
        GROUP BY ALL ORDER BY key
    """,
    # Per group and, in the row whose `total` is 1, over every turn of the window.
    "analytics_latency": f"""{_KEYED}, stages AS (
            SELECT {_TURN_KEY} AS key,
                   {", ".join(f"{sql} AS {name}" for name, sql in _STAGE_SQL.items())}
            FROM turns t JOIN keyed k ON k.session_id = t.session_id
            WHERE t.turn_started_ts IS NOT NULL
        )
        SELECT key, grouping(key) AS total,
               {", ".join(f"quantile_cont({s}, {_QUANTILES}) AS {s}, count({s}) AS {s}_count"
                          for s in STAGES)}
        FROM stages GROUP BY GROUPING SETS ((key), ()) ORDER BY total, key
    """,
}


# --- cost -------------------------------------------------------------------------------


# --- the report -------------------------------------------------------------------------

Query = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


def _blank() -> dict[str, Any]:
    return {"sessions": 0, "turns": 0, "audio_in_ms": 0, "audio_out_ms": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cost": 0.0, "interruptions": 0, "errors": 0, "tool_calls": 0,
            "latency_ms": {s: {"p50": None, "p90": None, "p99": None, "count": 0} for s in STAGES}}


def _latency(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        values = row[stage] or [None] * len(PERCENTILES)
        p50, p90, p99 = (None if v is None else round(float(v), 1) for v in values)
        out[stage] = {"p50": p50, "p90": p90, "p99": p99, "count": int(row[f"{stage}_count"])}
    return out


def _finish(group: dict[str, Any]) -> dict[str, Any]:
    """A group's sums in the contract's units."""
    group["audio_in_minutes"] = round(group.pop("audio_in_ms") / 60_000, 3)
    group["audio_out_minutes"] = round(group.pop("audio_out_ms") / 60_000, 3)
    group["cost"] = round(group["cost"], 6)
    order = ("key", "label", "sessions", "turns", "audio_in_minutes", "audio_out_minutes", "prompt_tokens",
             "completion_tokens", "cost", "interruptions", "errors", "tool_calls", "latency_ms")
    return {k: group[k] for k in order if k in group}


async def report(query: Query, *, by: str, since_ns: int, until_ns: int, user: str | None,
                 prices: Sequence[PriceConfig], currency: str, scope: str) -> dict[str, Any]:
    """The analytics answer (docs/analytics.md): a row per group, ordered by key, and totals.
    `user`: only this user's sessions (an id or an email); None: everyone's."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}")
    params = {"by": by, "since": since_ns, "until": until_ns, "user": user}
    priced = Prices(prices)
    groups: dict[str, dict[str, Any]] = {}
    names: dict[str, str | None] = {}
    totals = _blank()

    def group(key: str) -> dict[str, Any]:
        return groups.setdefault(key, _blank())

    for r in await query("analytics_sessions", params):
        names[r["key"]] = r["name"]
        cost = (priced.audio(r["asr_provider"], "in", r["audio_in_ms"] / 1000)
                + priced.audio(r["tts_provider"], "out", r["audio_out_ms"] / 1000))
        for g in (group(r["key"]), totals):
            for name in ("sessions", "audio_in_ms", "audio_out_ms", "errors"):
                g[name] += r[name]
            g["cost"] += cost
    for r in await query("analytics_turns", params):
        cost = priced.tokens(r["provider"], r["model"], r["prompt_tokens"], r["completion_tokens"])
        for g in (group(r["key"]), totals):
            for name in ("turns", "prompt_tokens", "completion_tokens", "interruptions", "tool_calls"):
                g[name] += r[name]
            g["cost"] += cost
    for r in await query("analytics_latency", params):
        (totals if r["total"] else group(r["key"]))["latency_ms"] = _latency(r)
    rows = [_finish({"key": key, "label": names.get(key) or key or "(none)", **groups[key]})
            for key in sorted(groups)]
    return {"since": iso(since_ns), "until": iso(until_ns), "by": by, "scope": scope,
            "currency": currency, "rows": rows, "totals": _finish(totals)}


def window(since: str | None, now_ns: int | None = None, tz: dt.tzinfo | None = None) -> tuple[int, int]:
    """(since, until) in ns: from `since` (default: 7 days ago) to now."""
    until = time.time_ns() if now_ns is None else now_ns
    start = parse_since(since or DEFAULT_SINCE, now=until / 1e9, tz=tz)
    assert start is not None
    return start, until
