"""`vagent streams`, `health`, `projections rebuild`: looking at the system (sessions: cli/sessions.py)."""

from __future__ import annotations

import json
from pathlib import Path

from actors.registry import ACTORS
from bus.admin import stream_states
from bus.client import Bus
from bus.deadletter import dead_letters
from bus.errors import BusError
from bus.health import health
from bus.subjects import control
from cli.display import Column, table
from projections.runtime import HEARTBEAT_NAME as PROJECTIONS_HEARTBEAT
from projections.runtime import rebuild, store_path


async def show_streams(bus: Bus, wide: bool = False) -> None:
    states = await stream_states(bus)
    print(table(["stream", "messages", "bytes", "first", "last", "replicas"],
                [[s.name, s.messages, s.bytes, s.first_seq, s.last_seq, s.replicas] for s in states]))
    rows = [[s.name, c.name, c.pending, c.ack_pending, c.redelivered]
            for s in states for c in s.consumers]
    print()
    print(table(["stream", "consumer", "pending", "awaiting ack", "redelivered"], rows)
          if rows else "no durable consumers")
    letters = await dead_letters(bus, limit=20)
    print()
    if not letters:
        print("no dead letters")
        return
    print(table(["when", "kind", "stream", "seq", Column("consumer", 10), "deliveries",
                 Column("event", 14), Column("reason", 14)],
                [[d.ts[:16].replace("T", " "), d.kind, d.stream, d.stream_seq, d.consumer,
                  d.deliveries, d.event_type or d.subject or "?", d.reason]
                 for d in letters], wide=wide))


async def rebuild_projections(bus: Bus, data_dir: Path) -> None:
    try:
        answer = json.loads(await bus.request(control("projections.rebuild"), timeout=600))
        where = "by the running vagent"
    except BusError:
        answer = {"tables": await rebuild(bus, store_path(data_dir))}
        where = f"into {store_path(data_dir)}"
    if "error" in answer:
        raise BusError(f"rebuild failed: {answer['error']}")
    print(f"rebuilt {where}:")
    print(table(["table", "rows"], [[t, n] for t, n in answer["tables"].items()]))


async def show_health(nats: str | None, as_json: bool, actors: list[str] | None = None) -> bool:
    """Report NATS and the heartbeats of `actors` and the projections; others found alive
    (not expected) are listed too but do not count."""
    expected = [*(list(ACTORS) if actors is None else actors), PROJECTIONS_HEARTBEAT]
    error: str | None
    try:
        bus: Bus | None = await Bus.connect(nats, name="vagent-health", timeout=2)
    except BusError as exc:
        bus, error = None, str(exc)
    else:
        error = None
    try:
        report = await health(bus, expected)
    finally:
        if bus:
            await bus.close()
    if as_json:
        print(json.dumps({
            "ok": report.ok, "nats": report.nats, "error": error or report.error,
            "missing": report.missing,
            "alive": {n: [hb.instance for hb in hbs] for n, hbs in report.actors.items()},
        }))
        return report.ok
    print(f"NATS        {'ok' if report.nats else 'DOWN: ' + (error or report.error or '')}")
    for name in [*expected, *sorted(set(report.actors) - set(expected))]:
        beats = report.actors.get(name, [])
        state = (f"alive ({len(beats)} instance{'s' if len(beats) != 1 else ''}, "
                 f"{sum(b.handled for b in beats)} handled)") if beats else "NOT RUNNING"
        print(f"{name:<11} {state}")
    return report.ok
