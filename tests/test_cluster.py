"""Durability on a real 3-node JetStream cluster: an acknowledged event survives losing a node.

The single embedded server of the other tests cannot show this: only with replicas does an
ack mean "on a quorum of disks", and only a crash of the stream leader mid-write exercises
the client's retry-with-the-same-Nats-Msg-Id path against a freshly elected leader.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bus.client import Bus, Stored
from bus.errors import BusError
from bus.log import LogCache, load, read
from schemas import UserText, new_id
from tests.nats_cluster import Node, retry_until, start_cluster, urls

EVENTS = 1500
KILL_AFTER = 500  # acks before the crash: the stream is busy, not idle, when the leader dies
WRITERS = 8  # concurrent publishers, so several writes are in flight at the moment of the crash
STREAM = "SESSIONS"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Node]]:
    nodes = []
    for name in ("n1", "n2", "n3"):
        d = tmp_path / name
        d.mkdir()
        nodes.append(Node(name, d))
    try:
        start_cluster(nodes)
        yield nodes
    finally:
        # Even after a failed assertion no nats-server may outlive the test.
        for node in nodes:
            node.kill()


async def replicas_current(bus: Bus, names: set[str]) -> bool:
    info = await bus.js.stream_info(STREAM)
    c = info.cluster
    if c is None or c.leader not in names:
        return False
    followers = {p.name: p for p in c.replicas or []}
    return all(followers.get(n) is not None and followers[n].current and not followers[n].lag
               for n in names - {c.leader})


async def wait_replicas_current(bus: Bus, names: set[str], deadline: float) -> None:
    async def check() -> None:
        if not await replicas_current(bus, names):
            raise BusError(f"{STREAM}: not every one of {sorted(names)} is a current replica yet")

    await retry_until(f"{STREAM} replicas current", deadline, check)


async def stored_entries(bus: Bus) -> list[tuple[int, str]]:
    info = await bus.js.stream_info(STREAM)
    last = info.state.last_seq
    out: list[tuple[int, str]] = []
    if last == 0:
        return out
    async for entry in read(bus, STREAM, "vagent.session.*.evt.>", from_seq=1, until_seq=last,
                            idle_timeout=5):
        assert entry.event is not None, entry.error
        out.append((entry.seq, entry.event.id))
    return out


@pytest.fixture
async def cluster_bus(cluster: list[Node], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bus]:
    monkeypatch.setenv("VAGENT_REPLICAS", "3")
    deadline = time.monotonic() + 20
    bus = await Bus.connect(urls(cluster), name="cluster-test")
    try:
        # Streams cannot be placed before the meta group has a leader and knows all peers.
        await retry_until("JetStream meta leader", deadline, bus.js.account_info)
        await retry_until("declare R3 streams", deadline, bus.declare)
        await wait_replicas_current(bus, {n.name for n in cluster}, deadline)
        yield bus
    finally:
        await bus.close()


@pytest.mark.slow
async def test_acknowledged_events_survive_killing_the_stream_leader(
        cluster: list[Node], cluster_bus: Bus) -> None:
    bus = cluster_bus
    info = await bus.js.stream_info(STREAM)
    assert info.config.num_replicas == 3

    session_id = "c" + new_id()
    events = [UserText(session_id=session_id, text=str(i)) for i in range(EVENTS)]
    acked: dict[str, Stored] = {}
    refused: list[str] = []
    reached_kill_point = asyncio.Event()
    todo = iter(events)

    async def writer() -> None:
        # A shared iterator hands each event to exactly one writer.
        for event in todo:
            try:
                acked[event.id] = await bus.publish(event)
            except BusError:
                refused.append(event.id)  # never acknowledged: the caller would know to retry
            if len(acked) >= KILL_AFTER:
                reached_kill_point.set()

    started = time.monotonic()
    writers = [asyncio.create_task(writer()) for _ in range(WRITERS)]
    try:
        await asyncio.wait_for(reached_kill_point.wait(), 30)
        leader_name = (await bus.js.stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
        victim = next((n for n in cluster if n.name == leader_name), None)
        assert victim is not None, f"{STREAM} has no leader among the nodes: {leader_name!r}"
        victim.kill()
        killed_at = len(acked)
        await asyncio.gather(*writers)
    finally:
        for w in writers:
            w.cancel()
        # Awaited so a failure above leaves no half-run publish behind for the next test.
        await asyncio.gather(*writers, return_exceptions=True)
    publish_s = time.monotonic() - started

    assert killed_at < EVENTS, "the crash came after the last publish: nothing was tested"
    assert len(acked) + len(refused) == EVENTS
    # Failover takes seconds and each publish retries for 15s, so refusals should be rare.
    assert len(acked) >= 0.95 * EVENTS, f"{len(refused)} publishes refused"

    survivors = {n.name for n in cluster if n is not victim}
    deadline = time.monotonic() + 20
    await wait_replicas_current(bus, survivors, deadline)
    new_leader = (await bus.js.stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
    assert new_leader != victim.name

    stored = await retry_until("read the stream", deadline, lambda: stored_entries(bus))
    ids = [event_id for _, event_id in stored]
    at_seq = dict(stored)
    distinct = set(ids)
    assert len(ids) == len(distinct), "an event is stored more than once"
    info = await bus.js.stream_info(STREAM)
    assert info.state.messages == len(distinct)
    missing = [i for i in acked if i not in distinct]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    # The ack's sequence is a promise too: the event must be exactly where JetStream said.
    moved = [(s.seq, i) for i, s in acked.items() if at_seq.get(s.seq) != i]
    assert not moved, f"{len(moved)} acknowledged events not at their acknowledged seq: {moved[:3]}"

    # The crashed node comes back with its old store and must catch up to a full replica.
    victim.start()
    await wait_replicas_current(bus, {n.name for n in cluster}, time.monotonic() + 20)

    retried = sum(s.duplicate for s in acked.values())  # stored before the crash, ack lost
    print(f"\n{len(acked)} acked ({retried} as duplicates), {len(refused)} refused, leader "
          f"{victim.name} killed after {killed_at} acks, new leader {new_leader}, "
          f"publishing took {publish_s:.1f}s")


@pytest.mark.slow
async def test_a_load_right_after_an_append_sees_it_even_from_a_lagging_replica(
        cluster: list[Node], cluster_bus: Bus) -> None:
    # Direct gets may be answered by any replica, and an ack only waits for a quorum: a
    # follower can be behind. A client is answered by the node it is connected to first, and
    # this follower is paused during each append, so it may still be catching up when asked.
    leader = (await cluster_bus.js.stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
    # The writer's own server must stay up, or its appends have no route to the leader at all.
    writer_url = cluster_bus.nc.connected_url
    assert writer_url is not None
    follower = next(n for n in cluster if n.name != leader and n.port != writer_url.port)
    assert follower.proc is not None
    reader = await Bus.connect(follower.url, name="reader")
    cache = LogCache(reader)
    try:
        session_id = "c" + new_id()
        for i in range(20):
            await cluster_bus.publish(UserText(session_id=session_id, text=f"{i}-a"))
            assert len((await cache.load("session", session_id))[0]) == 2 * i + 1
            follower.proc.send_signal(signal.SIGSTOP)  # falls behind while the others go on
            try:
                stored = await cluster_bus.publish(UserText(session_id=session_id, text=f"{i}-b"))
            finally:
                follower.proc.send_signal(signal.SIGCONT)
            entries, last = await load(reader, "session", session_id)
            cached, _ = await cache.load("session", session_id)
            assert last == stored.seq
            assert [e.event.text for e in entries][-2:] == [f"{i}-a", f"{i}-b"]  # type: ignore[union-attr]
            assert len(entries) == 2 * (i + 1)
            assert cached == entries
    finally:
        await reader.close()
