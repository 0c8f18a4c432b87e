"""Which edge holds each connected session, so that a session whose edge died is ended.

A session's log says it is connected from its `session.started` until its `session.ended`,
which the edge records when the connection ends. An edge that is killed records nothing,
and its sessions would stay "connected" for ever: every resume refused (`session_active`).
So each edge process

- heartbeats into the `vagent_edges` KV bucket (every BEAT seconds; entries expire after 15 s),
- holds a lease per session it serves in `vagent_session_leases` (session id → this edge and
  the `session.started` it recorded), taken before that event is stored and given up only
  after `session.ended` is.

A session is *lost* when its log says connected but no live edge holds it. It then gets
`session.ended` with reason `edge_lost`, and its client may resume it within the resume
window like any ended session. Lost sessions are found

- at start: an edge ends what the previous edge on the same data dir and address held (its id
  is kept in `<data dir>/edge-<host>-<port>.id`); that edge is certainly gone, since this one
  now holds its address, so a restart ends them at once, without waiting for heartbeats;
- every SWEEP seconds: leases of edges whose heartbeat was missing on two sweeps in a row (one
  miss may be NATS restarting, which drops entries that expired while it was down);
- when a client resumes a session its log says connected: the holder is checked then and there.

The `session.ended` of a lost session has an id derived from the `session.started` it ends,
so edges that find the same lost session at once store one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from pathlib import Path

import msgspec

from bus import kv
from bus.client import Bus
from bus.log import last_event
from schemas import SessionEnded, SessionStarted, derived_id, new_id

log = logging.getLogger("vagent.edge.leases")

EDGES = "vagent_edges"
LEASES = "vagent_session_leases"
BEAT = 3.0  # seconds between heartbeats (the bucket forgets one after 15 s)
SWEEP = 10.0  # seconds between sweeps for sessions of dead edges
MARKER_TTL = 60.0  # seconds a released lease's purge marker is kept
LOST = "edge_lost"
# Sessions that only an edge connection starts: one of these without any lease (it was started
# before leases existed, or its lease was lost) has no edge left to end it. `vagent say` and
# `vagent chat` sessions ("nats", "chat") have no connection to lose.
EDGE_TRANSPORTS = frozenset({"ws", "xiaozhi", "webrtc"})
_KV_KEY = re.compile(r"[-_=A-Za-z0-9]+")


class Lease(msgspec.Struct):
    session_id: str
    edge: str  # the holding edge process's id
    started: str  # the id of the session.started it recorded
    ts: int


class EdgeBeat(msgspec.Struct):
    edge: str
    address: str  # host:port it serves
    hostname: str
    pid: int
    started_ts: int
    ts: int


def lease_key(session_id: str) -> str:
    """A KV key for any session id (`:`, `@` and `+` are not allowed in keys; the hex form has a
    dot, which no session id has, so the two forms never meet)."""
    return session_id if _KV_KEY.fullmatch(session_id) else "hex." + session_id.encode().hex()


def lost_event(started: SessionStarted) -> SessionEnded:
    return SessionEnded(session_id=started.session_id, reason=LOST, causation_id=started.id,
                        id=derived_id(started.id, LOST, 0))


class SessionLeases:
    """This edge process's heartbeat and the leases of the sessions it holds."""

    def __init__(self, bus: Bus, data_dir: Path) -> None:
        self.bus = bus
        self.data_dir = data_dir
        self.edge = new_id()  # this process: a restarted edge is another one
        self.address = ""
        self._started_ts = time.time_ns()
        self._held: dict[str, int] = {}  # session id → our lease's revision
        self._unrecorded: dict[str, SessionEnded] = {}  # ends NATS did not take: retried
        self._gone: set[str] = set()  # edges known dead (the previous one at our address)
        self._missing: set[str] = set()  # edges without a heartbeat at the last sweep
        self._task: asyncio.Task[None] | None = None

    # --- this edge's life ---------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Beat, end the sessions the previous edge at this address held, then keep beating and
        sweeping. Call once the address is bound: holding it proves that edge is gone."""
        self.address = f"{host}:{port}"
        await self._beat()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.data_dir / f"edge-{host}-{port}.id"
        with contextlib.suppress(OSError):
            previous = id_file.read_text().strip()
            if previous and previous != self.edge:
                self._gone.add(previous)
        tmp = id_file.with_name(f".{id_file.name}.{os.getpid()}")
        tmp.write_text(self.edge)
        os.replace(tmp, id_file)
        if self._gone:
            try:
                ended = await self.sweep()
            except Exception as exc:  # the edge serves anyway; the next sweeps retry
                log.warning("sessions of the previous edge at %s not swept: %s", self.address,
                            exc or type(exc).__name__)
            else:
                if ended:
                    log.warning("ended %d session(s) of the previous edge at %s (%s)", ended,
                                self.address, LOST)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """After the edge closed its links: stop beating, and say so at once."""
        if self._task is not None:
            # Cancelled until it ends: 3.11's wait_for (in nats-py's requests) loses a
            # cancellation that comes as the reply does, and the beats would go on for good.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        with contextlib.suppress(Exception):
            await kv.delete(self.bus, EDGES, self.edge)

    async def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP
        while True:
            await asyncio.sleep(BEAT)
            try:
                await self._beat()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP
                    await self.sweep()
            except Exception as exc:  # NATS away: the next round tries again
                log.warning("edge heartbeat or sweep failed: %s", exc or type(exc).__name__)

    async def _beat(self) -> None:
        now = time.time_ns()
        await kv.put(self.bus, EDGES, self.edge, msgspec.json.encode(EdgeBeat(
            edge=self.edge, address=self.address, hostname=socket.gethostname(), pid=os.getpid(),
            started_ts=self._started_ts, ts=now)))

    # --- the sessions this edge holds -----------------------------------------------------

    async def hold(self, started: SessionStarted) -> None:
        """Take the session's lease; before its `session.started` is stored, so that no stored
        start is ever without a holder."""
        lease = Lease(session_id=started.session_id, edge=self.edge, started=started.id,
                      ts=time.time_ns())
        self._held[started.session_id] = await kv.put(
            self.bus, LEASES, lease_key(started.session_id), msgspec.json.encode(lease))

    async def release(self, session_id: str) -> None:
        """Give the lease up once `session.ended` is stored (unless another edge took it since:
        the client resumed there)."""
        revision = self._held.pop(session_id, None)
        if revision is None:
            return
        try:
            await kv.remove(self.bus, LEASES, lease_key(session_id), last=revision,
                            marker_ttl=MARKER_TTL)
        except Exception as exc:  # left behind, it names this live edge until it stops
            log.warning("lease of %s not released: %s", session_id, exc or type(exc).__name__)

    def unrecorded(self, ended: SessionEnded) -> None:
        """A `session.ended` NATS did not take: the lease stays, and the sweep records it."""
        self._unrecorded[ended.session_id] = ended

    # --- lost sessions --------------------------------------------------------------------

    async def end_if_lost(self, started: SessionStarted) -> bool:
        """The log says the session is connected: if no live edge holds it, record its
        `session.ended` (edge_lost) and return True."""
        entry = await kv.get_entry(self.bus, LEASES, lease_key(started.session_id))
        lease = msgspec.json.decode(entry.value, type=Lease) if entry else None
        if lease is None:
            if started.transport not in EDGE_TRANSPORTS:
                return False
        elif lease.edge == self.edge or (lease.edge not in self._gone
                                         and await self._alive(lease.edge)):
            return False
        await self.bus.publish(lost_event(started))
        log.info("session %s lost with its edge: ended (%s)", started.session_id, LOST)
        if entry is not None:
            await kv.remove(self.bus, LEASES, lease_key(started.session_id), last=entry.revision,
                            marker_ttl=MARKER_TTL)
        return True

    async def sweep(self) -> int:
        """End the sessions held by dead edges; retry ends NATS did not take. How many ended."""
        for sid, unrecorded in list(self._unrecorded.items()):
            await self.bus.publish(unrecorded)  # the same id again: stored once
            del self._unrecorded[sid]
            await self.release(sid)
        leases = await kv.entries(self.bus, LEASES)
        alive = set(await kv.items(self.bus, EDGES))
        missing: set[str] = set()
        ended = 0
        for entry in leases.values():
            lease = msgspec.json.decode(entry.value, type=Lease)
            if lease.edge == self.edge:
                continue
            if lease.edge not in self._gone:  # gone for sure, even while its last beat lasts
                if lease.edge in alive:
                    continue
                missing.add(lease.edge)
                if lease.edge not in self._missing:  # one miss: ended at the next sweep if still so
                    continue
            ended += await self._end(lease, entry.revision)
        self._missing = missing
        return ended

    async def _end(self, lease: Lease, revision: int) -> int:
        started = await last_event(self.bus, "session", lease.session_id, "session.started")
        ended = await last_event(self.bus, "session", lease.session_id, "session.ended")
        count = 0
        # Only the start this lease was taken for: a newer one means the client resumed
        # elsewhere (and that edge's lease replaced this one); none, the start was never stored.
        if (isinstance(started, SessionStarted) and started.id == lease.started
                and (ended is None or ended.ts < started.ts)):
            await self.bus.publish(lost_event(started))
            log.info("session %s lost with edge %s: ended (%s)", lease.session_id, lease.edge, LOST)
            count = 1
        await kv.remove(self.bus, LEASES, lease_key(lease.session_id), last=revision,
                        marker_ttl=MARKER_TTL)
        return count

    async def _alive(self, edge: str) -> bool:
        return await kv.get(self.bus, EDGES, edge) is not None
