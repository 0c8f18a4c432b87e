"""Liveness: actors heartbeat into the `vagent_actors` KV bucket (entries expire by TTL)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import msgspec
import nats.errors

from bus import kv
from bus.client import Bus

BUCKET = "vagent_actors"
INTERVAL = 3.0  # seconds between heartbeats; the bucket forgets an entry after 15 s
# The actors a full deployment runs, by the name each heartbeats under. Readiness probes
# above the actors (the edge's /readyz) expect these without importing the actors; the
# actor registry maps the same names to classes, and a test keeps the two equal.
ACTOR_NAMES: tuple[str, ...] = ("asr", "dialogue", "indexer", "tools", "tts")


class Heartbeat(msgspec.Struct):
    name: str
    instance: str
    pid: int
    started_ts: int
    ts: int
    handled: int = 0
    failed: int = 0


def instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def beat(bus: Bus, hb: Heartbeat) -> None:
    await kv.put(bus, BUCKET, f"{hb.name}.{hb.instance}", msgspec.json.encode(hb))


async def forget(bus: Bus, name: str, instance: str) -> None:
    await kv.delete(bus, BUCKET, f"{name}.{instance}")


@dataclass
class Health:
    nats: bool
    actors: dict[str, list[Heartbeat]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.nats and not self.missing


async def health(bus: Bus | None, expected: list[str]) -> Health:
    if bus is None or not bus.connected:
        return Health(nats=False, missing=list(expected), error="not connected to NATS")
    alive: dict[str, list[Heartbeat]] = {}
    try:
        entries = await kv.items(bus, BUCKET)
    except (nats.errors.Error, TimeoutError) as exc:
        return Health(nats=False, missing=list(expected), error=str(exc) or type(exc).__name__)
    now = time.time_ns()
    for value in entries.values():
        hb = msgspec.json.decode(value, type=Heartbeat)
        if now - hb.ts < 15 * 1_000_000_000:
            alive.setdefault(hb.name, []).append(hb)
    return Health(nats=True, actors=alive, missing=[n for n in expected if n not in alive])
