"""How events and tables look in a terminal."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

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
    fields = rounded({k: v for k, v in to_builtins(event).items() if k not in _ENVELOPE})
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


WIDTH = 100  # what a table or a report line fits in, unless --wide


class Column(NamedTuple):
    """A table column. `fit` > 0: cut down to that many characters when the table is too
    wide (0: never); an id is cut in the middle (its prefix and its distinct end stay), text
    at its end."""

    title: str
    fit: int = 0
    id: bool = False


def table(columns: Sequence[str | Column], rows: list[list[Any]], wide: bool = False) -> str:
    """Rows under their column titles, fitted to WIDTH unless `wide`: ids are cut first,
    then the widest of the other columns that may be cut. A note under the table says when
    an id was cut."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    # One line per row: whitespace inside a cell (an error's newlines) is one space.
    cells = [[c.title for c in cols]] + [["" if v is None else " ".join(str(v).split()) for v in r]
                                         for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for ids_first in (True, False):  # an id loses least by its middle: those are cut first
        while not wide and sum(widths) + 2 * (len(cols) - 1) > WIDTH:
            cuttable = [i for i, c in enumerate(cols)
                        if c.fit and widths[i] > c.fit and (c.id or not ids_first)]
            if not cuttable:
                break
            widths[max(cuttable, key=lambda i: widths[i])] -= 1
    fitted = [[clip(v, w, middle=c.id) for v, w, c in zip(r, widths, cols, strict=True)] for r in cells]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in fitted]
    lines.insert(1, "  ".join("-" * w for w in widths))
    cut_ids = any(c.id and len(r[i]) > widths[i] for r in cells[1:] for i, c in enumerate(cols))
    if cut_ids:
        lines.append("(ids shortened: --wide shows them whole)")
    return "\n".join(lines)


def clip(text: str, width: int, middle: bool = False) -> str:
    """`text` in at most `width` characters, an ellipsis where it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    if middle:
        head = (width - 1) // 2
        return text[:head] + "…" + text[len(text) - (width - 1 - head):]
    return text[: width - 1] + "…"


def fit(line: str, wide: bool = False) -> str:
    """One line of a report, cut at WIDTH unless `wide`."""
    return line if wide else clip(line, WIDTH)


def named(name: str | None, ident: str | None, wide: bool) -> str:
    """Something with a name and an id as a person reads it in a table: the name (with the
    id beside it with --wide); the id alone when the read model has no name for it."""
    if not name:
        return ident or ""
    return f"{name} ({ident})" if wide and ident else name


def ms(value: float | None) -> str:
    """A latency, in whole milliseconds."""
    return "-" if value is None else f"{value:.0f} ms"


def minute(ts_ns: int | None) -> str:
    """A time in a table: to the minute."""
    return when(ts_ns)[:16]


def rounded(fields: dict[str, Any]) -> dict[str, Any]:
    """Event fields for reading: latencies (`…_ms`) in whole milliseconds."""
    return {k: round(v) if k.endswith("_ms") and isinstance(v, float) else v for k, v in fields.items()}


def shorten(text: str | None, width: int = 48) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
