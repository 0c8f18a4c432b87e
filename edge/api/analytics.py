"""/api/v1/analytics: usage, latency and cost over a window, grouped (projections/analytics.py).
A user reads their own sessions; an operator reads everyone's, or one user's with `?user=`."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec
from starlette.responses import Response

from edge.api.endpoint import Call, Endpoint, QueryParam, json_response
from edge.api.models import Analytics
from edge.errors import ApiError
from projections.analytics import BY, DEFAULT_SINCE, SINCE_HINT, SINCE_PATTERN, report, window

SINCE = re.compile(SINCE_PATTERN)
PARAMS = (
    QueryParam("since", "from when: `30m`, `24h`, `7d` ago, or an ISO date or time (UTC unless it "
                        "names a zone); until now", {"type": "string", "default": DEFAULT_SINCE,
                                                     "pattern": SINCE_PATTERN}),
    QueryParam("by", "what a row is", {"type": "string", "enum": list(BY), "default": "day"}),
    QueryParam("user", "an operator's: only this user's sessions (a user id or an email)",
               {"type": "string", "minLength": 1, "maxLength": 254}),
)


async def get_analytics(call: Call) -> Response:
    by = call.query_param("by") or "day"
    if by not in BY:
        raise ApiError(422, "validation_failed", f"by must be one of {', '.join(BY)}", {"at": "by"})
    raw = call.query_param("since")
    try:
        if raw is not None and not SINCE.match(raw):  # the documented pattern, exactly
            raise ValueError(f"since {raw!r} is not a time: {SINCE_HINT}")
        since, until = window(raw, tz=dt.UTC)
    except ValueError as exc:
        raise ApiError(422, "validation_failed", str(exc), {"at": "since"}) from None
    wanted = call.query_param("user")
    if wanted is not None and not 1 <= len(wanted) <= 254:
        raise ApiError(422, "validation_failed", "user must be a user id or an email", {"at": "user"})
    caller = await call.services.accounts.require(call.user_id)
    mine = wanted is None or wanted in (caller.user_id, caller.email)
    if caller.role != "operator" and not mine:
        raise ApiError(403, "forbidden", "only an operator may read another user's analytics",
                       {"at": "user"})
    user = call.user_id if caller.role != "operator" or wanted in (caller.user_id, caller.email) else wanted

    async def query(name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return await call.services.query(name, **params)

    config = call.services.config
    answer = await report(query, by=by, since_ns=since, until_ns=until, user=user, prices=config.prices,
                          currency=config.telemetry.currency, scope="own" if user == call.user_id else "all")
    return json_response(msgspec.convert(answer, Analytics))


ENDPOINTS = (
    Endpoint("GET", "/api/v1/analytics", get_analytics,
             "Usage, latency and cost by day, assistant, model, user or transport: your own, or "
             "everyone's for an operator", "analytics", answer=Analytics, query=PARAMS,
             errors=(403, 422)),
)
