"""How events and tables look in a terminal."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from schemas import DecodeError, Event, decode, to_builtins

_ENVELOPE = {"type", "id", "ts", "v", "causation_id", "session_id", "user_id", "assistant_id",
             "document_id", "turn_id"}


def clock(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


def when(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return dt.datetime.fromtimestamp(ts_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def event_line(subject: str, event: Event) -> str:
    fields = {k: v for k, v in to_builtins(event).items() if k not in _ENVELOPE}
    body = " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in fields.items())
    where = f"{event.aggregate}:{event.aggregate_id}"
    kind = "live" if ".live." in subject else "evt"
    return f"{clock(event.ts)}  {where:<24} {kind:<4} {event.type:<20} {body}".rstrip()


def message_line(subject: str, data: bytes, as_json: bool) -> str:
    try:
        event = decode(data)
    except DecodeError as exc:
        if as_json:
            return json.dumps({"subject": subject, "bytes": len(data), "error": str(exc)})
        return f"{'':12}  {subject}  <{len(data)} bytes: {exc}>"
    if as_json:
        return json.dumps({**to_builtins(event), "subject": subject}, ensure_ascii=False)
    return event_line(subject, event)


def table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shorten(text: str | None, width: int = 48) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
