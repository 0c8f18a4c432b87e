"""Cursor pagination over read models, and the API's timestamp format."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge.api.endpoint import Call, QueryParam
from edge.errors import ApiError
from schemas import check_token

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
PAGE_PARAMS = (
    QueryParam("limit", f"items per page, 1-{MAX_LIMIT}",
               {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
    QueryParam("cursor", "`next_cursor` of the previous page", {"type": "string", "maxLength": 400}),
)


def page_request(call: Call) -> tuple[int, str]:
    """(limit, after): rows are ordered by id and the cursor is the last id seen."""
    raw_limit = call.query_param("limit")
    try:
        limit = DEFAULT_LIMIT if raw_limit is None else int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(422, "validation_failed", f"limit must be an integer from 1 to {MAX_LIMIT}",
                       {"at": "limit"})
    cursor = call.query_param("cursor")
    if not cursor:
        return limit, ""
    try:
        # validate: no silently dropped characters (a mangled cursor must not restart the list)
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_",
                                 validate=True).decode()
        check_token("cursor", after)  # every cursor this API gives is an id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(422, "validation_failed", "cursor is not one this API gave",
                       {"at": "cursor"}) from None
    return limit, after


async def page(call: Call, query: str, key: str, convert: Callable[[dict[str, Any]], Any],
               **params: Any) -> tuple[list[Any], str | None]:
    """One page of a read query that takes $after and $limit and orders by `key`."""
    limit, after = page_request(call)
    rows = await call.services.query(query, after=after, limit=limit + 1, **params)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = base64.urlsafe_b64encode(rows[-1][key].encode()).decode().rstrip("=") if more else None
    return [convert(row) for row in rows], cursor


def iso(ns: int | None) -> str:
    if ns is None:
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def page_rows(call: Call, rows: list[dict[str, Any]], key: str, convert: Callable[[dict[str, Any]], Any]
              ) -> tuple[list[Any], str | None]:
    """One page of rows already read in their order (not ordered by `key`): the cursor is
    the `key` of the last row seen, and one that is not there is refused."""
    limit, after = page_request(call)
    start = 0
    if after:
        keys = [str(row[key]) for row in rows]
        if after not in keys:
            raise ApiError(422, "validation_failed", "cursor is not one this API gave", {"at": "cursor"})
        start = keys.index(after) + 1
    chosen = rows[start:start + limit]
    more = start + limit < len(rows)
    cursor = base64.urlsafe_b64encode(str(chosen[-1][key]).encode()).decode().rstrip("=") if more else None
    return [convert(row) for row in chosen], cursor
