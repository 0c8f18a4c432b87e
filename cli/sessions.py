"""`vagent sessions`, `vagent session show`, `vagent session export`: looking at sessions.

The list reads the read models (sessions, with the owner's email from users and the median
latencies from turns). `show` and `export` read the session's own log, so they work with
no read model at all; the per-turn stages are folded by the `turns` projection's own code.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import msgspec

from bus.client import Bus
from bus.errors import BusError
from cli.display import Column, clock, fit, minute, ms, named, rounded, shorten, table, when
from projections.analytics import parse_since
from projections.assistants import settings_of
from projections.bulk import Row
from projections.client import QueryError, run_query
from replay.log import fold_turns, session_log, stages
from schemas import (
    AssistantMessage,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    SpeechIgnored,
    SpeechStopped,
    ToolCall,
    ToolResult,
    TurnEnd,
    TurnInterrupted,
    TurnPaused,
    TurnResumed,
    UserImage,
    UserText,
    to_builtins,
)

_ENVELOPE = {"type", "id", "ts", "v", "causation_id", "session_id", "turn_id"}


# --- the list ---------------------------------------------------------------------------

async def list_sessions(nats: str | None, data_dir: Path, *, user: str | None, assistant: str | None,
                        since: str | None, limit: int, as_json: bool, wide: bool = False) -> None:
    params = {"user": user, "assistant_id": assistant, "since": parse_since(since), "limit": limit}
    try:
        bus: Bus | None = await Bus.connect(nats, name="vagent-cli", timeout=2)
    except BusError:
        bus = None  # read the file directly
    try:
        try:
            columns, rows = await run_query(bus, data_dir, "sessions_table", params)
        except QueryError as exc:
            raise BusError(str(exc)) from None
    finally:
        if bus:
            await bus.close()
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    if as_json:
        print(json.dumps(records, default=str, ensure_ascii=False))
        return
    if not records:
        print("no sessions" + (" match" if any(v for k, v in params.items() if k != "limit") else " yet"))
        return

    def latency(r: dict[str, Any]) -> str:
        if r["p50_first_audio_ms"] is not None:
            return ms(r["p50_first_audio_ms"])
        if r["p50_first_sentence_ms"] is not None:
            return ms(r["p50_first_sentence_ms"]) + "*"
        return "-"

    # The last answer's words only where there is room for them.
    print(table(
        [Column("session", 12, id=True), "started", Column("owner", 12), Column("assistant", 10),
         "via", "turns", "p50 audio", Column("end", 9), *(["last answer"] if wide else [])],
        [[r["session_id"], minute(r["started_ts"] or r["first_event_ts"]),
          r["email"] or r["user_id"] or "-",
          named(r["assistant_name"], r["assistant_id"], wide) if r["assistant_id"] else "default",
          r["transport"] or "-", r["turns"], latency(r),
          (r["end_reason"] or "ended") if r["ended_ts"] else "open",
          *([shorten(r["last_assistant_text"], 60)] if wide else [])] for r in records], wide=wide))
    print("p50 audio: median time from the end of the user's speech (or a typed input's turn start)\n"
          "to the answer's first audio; *: to its first sentence (no audio)")


# --- one session ------------------------------------------------------------------------


def bar(value: float, scale: float, width: int = 24) -> str:
    """A text bar, eighths of a block at the end: `████▌`."""
    eighths = round(max(0.0, value) / scale * width * 8) if scale > 0 else 0
    full, part = divmod(min(eighths, width * 8), 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")


def turn_end(end: TurnEnd) -> str:
    """Why an utterance ended when it did: `model p=0.97 after 224 ms silence`."""
    probability = f" p={end.probability:.2f}" if end.probability is not None else ""
    return f"{end.by}{probability} after {end.silence_ms} ms silence"


def summary(event: Event) -> str:
    fields = rounded({k: v for k, v in to_builtins(event).items()
                      if k not in _ENVELOPE and v not in (None, [], {})})
    for noisy in ("input_id", "speech_started_ts", "speech_stopped_ts"):
        fields.pop(noisy, None)
    if isinstance(fields.get("audio"), dict):
        fields["audio"] = f"{fields['audio'].get('duration_ms', 0)} ms stored"
    if isinstance(event, SpeechStopped) and event.end is not None:
        # First: the rest of the line may not fit in 100 columns.
        fields = {"end": turn_end(event.end), **{k: v for k, v in fields.items() if k != "end"}}
    if isinstance(event, UserImage):  # where the photo is, not the blob reference's fields
        fields["image"] = f"{event.image.bucket}/{event.image.name}"
    if isinstance(event, AssistantMessage):
        fields.pop("usage", None)
        if event.tool_calls:
            fields["tool_calls"] = ", ".join(f"{c.name}({shorten(c.arguments, 40)})"
                                             for c in event.tool_calls)
    parts = []
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        width = 70 if key in ("text", "content", "message", "image") else 40
        parts.append(f"{key}={shorten(text, width)}")
    return " ".join(parts)


def _overlaps(events: list[Event], turn_id: str) -> list[str]:
    """What was heard over the turn's answer, and whether its audio paused and resumed."""
    lines = []
    for event in events:
        if getattr(event, "turn_id", None) != turn_id:
            continue
        if isinstance(event, SpeechIgnored):
            lines.append(f"  heard over it, ignored ({event.reason}, {event.speech_ms} ms): "
                         f"{shorten(event.text, 50)!r}")
        elif isinstance(event, TurnPaused):
            lines.append("  paused by speech over it")
        elif isinstance(event, TurnResumed):
            lines.append(f"  resumed after {ms(event.paused_ms)} ({event.reason})")
    return lines


def _turn_number(turns: list[Row]) -> dict[str, int]:
    return {t["turn_id"]: n for n, t in enumerate(turns, start=1)}


async def _row(bus: Bus, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """One row from the running read-model service; None without one (the log alone is
    enough for the rest)."""
    try:
        columns, rows = await run_query(bus, None, query, params)
    except QueryError:
        return None
    return dict(zip(columns, rows[0], strict=True)) if rows else None


async def _lookup(bus: Bus, query: str, params: dict[str, Any], column: str) -> str | None:
    row = await _row(bus, query, params)
    return row[column] if row else None


async def _who(bus: Bus, started: SessionStarted) -> list[str]:
    """The session's user, assistant and device: names beside ids."""
    lines = []
    if started.user_id:
        email = await _lookup(bus, "user", {"user_id": started.user_id}, "email")
        lines.append(f"user      {email} ({started.user_id})" if email else f"user      {started.user_id}")
    if started.assistant_id:
        assistant = await _row(bus, "assistant_settings", {"assistant_id": started.assistant_id})
        name = assistant and assistant["name"]
        lines.append(f"assistant {name} ({started.assistant_id})" if name
                     else f"assistant {started.assistant_id}")
        turn = settings_of(assistant)["turn"] if assistant else None
        if turn is not None:  # the rest of its turn-taking is the configuration's
            own = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}"
                           for k, v in msgspec.structs.asdict(turn).items() if v is not None)
            lines.append(f"turn      {own or 'as configured'} (the assistant's settings now)")
    if started.device_id:
        lines.append(f"device    {started.device_id}")
    return lines


async def show_session(bus: Bus, session_id: str, as_json: bool, wide: bool = False) -> None:
    entries = await session_log(bus, session_id)
    events = [e.event for e in entries if e.event is not None]
    turns = fold_turns(entries)
    if as_json:
        print(json.dumps({
            "session_id": session_id,
            "turns": [{**t, "stages_ms": {s.name: round(s.ms, 1) for s in stages(t)}} for t in turns],
            "events": [{**to_builtins(e.event), "seq": e.seq} if e.event is not None
                       else {"seq": e.seq, "error": e.error} for e in entries],
        }, default=str, ensure_ascii=False))
        return
    out: list[str] = []
    started = next((e for e in events if isinstance(e, SessionStarted)), None)
    ended = next((e for e in reversed(events) if isinstance(e, SessionEnded)), None)
    t0 = events[0].ts if events else 0
    out.append(f"session {session_id}")
    if started is not None:
        out.append(f"  {started.transport}; started {when(started.ts)}")
    out.append(f"  {'ended ' + when(ended.ts) + ' (' + ended.reason + ')' if ended else 'not ended'}; "
               f"{len(entries)} events, {len(turns)} turns")
    if started is not None:
        out += ["  " + line for line in await _who(bus, started)]
    number = _turn_number(turns)
    photos = {e.id for e in events if isinstance(e, UserText) and e.source == "image"}

    out.append("\ntimeline")
    for entry in entries:
        event = entry.event
        if event is None:
            out.append(f"  {'':>9}  <undecodable seq {entry.seq}: {entry.error}>")
            continue
        turn_no = number.get(getattr(event, "turn_id", None) or event.id)
        mark = "!" if isinstance(event, Error | TurnInterrupted) else " "
        out.append(f"  {(event.ts - t0) / 1e9:>8.3f}s {mark}{clock(event.ts)} "
                   f"{'t' + str(turn_no) if turn_no else '':<4} {event.type:<19} {summary(event)}".rstrip())

    all_stages = [s for t in turns for s in stages(t)]
    scale = max((s.ms for s in all_stages if "complete" not in s.name), default=0.0)
    for n, turn in enumerate(turns, start=1):
        kind = "voice" if turn["input_type"] == "transcript.final" else \
            "photo" if turn["turn_id"] in photos else "typed"
        out.append(f"\nturn {n} ({kind}): {shorten(turn['input_text'], 70)!r}")
        for stage in stages(turn):
            out.append(f"  {stage.name:<32} {bar(stage.ms, max(scale, stage.ms)):<25} {ms(stage.ms)}")
        tid = turn["turn_id"]
        results = {e.call_id: e for e in events if isinstance(e, ToolResult) and e.turn_id == tid}
        for call in (e for e in events if isinstance(e, ToolCall) and e.turn_id == tid):
            result = results.get(call.call_id)
            outcome = ("(no result)" if result is None else
                       ("error: " if result.is_error else "") + shorten(result.content, 50))
            out.append(f"  tool {call.name}({shorten(call.arguments, 40)}) → {outcome}")
        out += _overlaps(events, tid)
        if turn["interrupted"]:
            out.append(f"  interrupted ({turn['interrupt_reason'] or 'abort'})")
        for error in (e for e in events if isinstance(e, Error) and e.turn_id == tid):
            out.append(f"  error {error.code}: {shorten(error.message, 70)}")
        if turn["answer_text"] is not None:
            model = "/".join(x for x in (turn["provider"], turn["model"]) if x)
            tokens = (f", {turn['prompt_tokens']}+{turn['completion_tokens']} tokens"
                      if turn["prompt_tokens"] or turn["completion_tokens"] else "")
            out.append(f"  answer{' (' + model + tokens + ')' if model else ''}: "
                       f"{shorten(turn['answer_text'], 90)!r}")
        elif turn["turn_started_ts"] is None:
            out.append("  (no turn: the dialogue did not take this input)")
        else:
            out.append("  (no answer)")
    loose = [e for e in events if isinstance(e, Error) and (e.turn_id is None or e.turn_id not in number)]
    for error in loose:
        out.append(f"\nerror {error.code} ({error.source or '?'}): {shorten(error.message, 90)}")
    if turns:
        voice = [s.ms for t in turns for s in stages(t) if s.name.endswith("→ first audio")]
        if voice:
            out.append(f"\nmedian → first audio: {ms(statistics.median(voice))} over {len(voice)} turns")
    print("\n".join(fit(line, wide) for text in out for line in text.split("\n")))


# --- export -----------------------------------------------------------------------------

async def export_json(bus: Bus, session_id: str) -> None:
    for entry in await session_log(bus, session_id):
        if entry.event is not None:
            print(json.dumps({**to_builtins(entry.event), "seq": entry.seq}, ensure_ascii=False))
        else:
            print(json.dumps({"seq": entry.seq, "subject": entry.subject, "error": entry.error}))
