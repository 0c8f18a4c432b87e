"""A session's own log, folded into turns and per-stage latencies by the `turns` read
model's code: no read model needs to exist."""

from __future__ import annotations

from dataclasses import dataclass

from bus.client import Bus
from bus.errors import BusError
from bus.log import Entry, load
from projections.bulk import Row
from projections.turns import Turns

MS = 1_000_000


class SessionNotFound(BusError):
    pass


async def session_log(bus: Bus, session_id: str) -> list[Entry]:
    try:
        entries, _ = await load(bus, "session", session_id)
    except ValueError as exc:
        raise SessionNotFound(str(exc)) from None
    if not entries:
        raise SessionNotFound(f"no session {session_id!r} in the log")
    return entries


def fold_turns(entries: list[Entry]) -> list[Row]:
    """The session's turns, as the `turns` read model folds them (same code)."""
    turns = Turns()
    rows: dict[str, Row] = {}
    for entry in entries:
        if entry.event is not None and turns.wants(entry.event):
            turns.fold(rows, entry.event, entry)
    return sorted(rows.values(), key=lambda r: r["seq_start"])


@dataclass
class Stage:
    name: str
    ms: float


def stages(turn: Row) -> list[Stage]:
    """The per-stage latencies of a turn, in ms, for those it reached."""
    voice = turn["speech_stopped_ts"] is not None
    start = turn["speech_stopped_ts"] if voice else turn["turn_started_ts"]
    origin = "end of speech" if voice else "input"
    out = []
    if voice and turn["transcript_final_ts"] is not None:
        out.append(Stage("end of speech → transcript", (turn["transcript_final_ts"] - start) / MS))
    if turn["first_delta_ms"] is not None:
        out.append(Stage("LLM time to first token", turn["first_delta_ms"]))
    for name, column in (("first sentence", "first_sentence_ts"), ("first audio", "first_audio_ts"),
                         ("answer complete", "answer_ts")):
        if start is not None and turn[column] is not None:
            out.append(Stage(f"{origin} → {name}", (turn[column] - start) / MS))
    return out
