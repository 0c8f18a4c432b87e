"""Read models: checkpointed with their rows, resumed exactly, rebuilt identically."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus.client import Bus
from bus.log import load
from projections.client import run_query
from projections.registry import PROJECTIONS
from projections.runtime import BATCH, ProjectionService, rebuild, store_path
from projections.store import ReadStore
from schemas import (
    AssistantCreated,
    AssistantDeleted,
    AssistantMessage,
    AssistantUpdated,
    DeviceBound,
    DeviceUnbound,
    DocumentIndexed,
    DocumentUploaded,
    TurnStarted,
    UserEmailVerified,
    UserLocked,
    UserRegistered,
    UserText,
    new_id,
)


async def turn(bus: Bus, session_id: str, n: int) -> None:
    await bus.publish(UserText(session_id=session_id, text=f"q{n}"))
    await bus.publish(TurnStarted(session_id=session_id))
    await bus.publish(AssistantMessage(session_id=session_id, text=f"a{n}"))


async def account(bus: Bus, n: int) -> None:
    """A user with a verified email, a lock, two assistants (one renamed, one deleted) and
    two devices (one unbound): every kind of account event a read model folds."""
    uid, kept, gone = new_id(), new_id(), new_id()
    await bus.publish(UserRegistered(user_id=uid, email=f"u{n}@example.com", default_assistant_id=kept))
    await bus.publish(UserEmailVerified(user_id=uid))
    await bus.publish(UserLocked(user_id=uid, reason="failed_logins", until_ts=n))
    for aid in (kept, gone):
        await bus.publish(AssistantCreated(assistant_id=aid, owner_id=uid, persona="p", tools=["calc"]))
    await bus.publish(AssistantUpdated(assistant_id=kept, name=f"renamed {n}", documents=["d1"]))
    await bus.publish(AssistantDeleted(assistant_id=gone))
    for device in ("aa:bb", "cc:dd"):
        await bus.publish(DeviceBound(user_id=uid, device_id=f"{device}:{n}", assistant_id=kept))
    await bus.publish(DeviceUnbound(user_id=uid, device_id=f"cc:dd:{n}"))
    for doc in (new_id(), new_id()):
        await bus.publish(DocumentUploaded(document_id=doc, owner_id=uid, title=f"manual {n}", size=10))
    await bus.publish(DocumentIndexed(document_id=doc, chunks=3))


def row(data_dir: Path, session_id: str) -> tuple[object, ...]:
    store = ReadStore(store_path(data_dir), [], read_only=True)
    try:
        return store.db.execute(
            "SELECT events, turns, last_assistant_text FROM sessions WHERE session_id = ?",
            [session_id]).fetchone()
    finally:
        store.close()


async def test_restart_resumes_exactly_where_it_stopped(bus: Bus, data_dir: Path) -> None:
    s = "p" + new_id()
    await turn(bus, s, 1)
    service = ProjectionService(bus, data_dir)
    await service.start()
    await service.caught_up()
    await service.stop()
    assert row(data_dir, s) == (3, 1, "a1")

    await turn(bus, s, 2)  # while no projection runs
    service = ProjectionService(bus, data_dir)
    await service.start()
    await service.caught_up()
    _, rows = await run_query(bus, data_dir, "sessions", {"limit": 1000})
    await service.stop()
    assert row(data_dir, s) == (6, 2, "a2")  # the first turn was not applied again
    assert [r[3:] for r in rows if r[0] == s] == [[6, 2, "a2"]]


async def test_a_redelivered_event_is_never_applied_twice(bus: Bus, tmp_path: Path) -> None:
    s = "p" + new_id()
    await turn(bus, s, 1)
    entries, _ = await load(bus, "session", s)
    projection = PROJECTIONS[0]()
    store = ReadStore(tmp_path / "r.duckdb", [projection])
    assert store.apply(projection, "SESSIONS", entries) == 3
    # The same batch again (a reader re-created after a restart re-sends it): no effect.
    assert store.apply(projection, "SESSIONS", entries) == 0
    assert store.apply(projection, "SESSIONS", entries[1:]) == 0
    assert store.db.execute("SELECT events, turns FROM sessions WHERE session_id = ?",
                            [s]).fetchone() == (3, 1)
    assert store.checkpoint("sessions", "SESSIONS") == entries[-1].seq
    store.close()


async def test_a_failed_batch_moves_neither_rows_nor_checkpoint(bus: Bus, tmp_path: Path) -> None:
    s = "p" + new_id()
    await turn(bus, s, 1)
    entries, _ = await load(bus, "session", s)
    projection = PROJECTIONS[0]()
    store = ReadStore(tmp_path / "r.duckdb", [projection])
    before = store.checkpoint("sessions", "SESSIONS")

    class Broken(type(projection)):  # type: ignore[misc]
        def apply(self, db, event, entry):  # type: ignore[no-untyped-def]
            super().apply(db, event, entry)
            if isinstance(event, AssistantMessage):
                raise RuntimeError("bug in a projection")

    try:
        store.apply(Broken(), "SESSIONS", entries)
    except RuntimeError:
        pass
    assert store.checkpoint("sessions", "SESSIONS") == before
    assert store.db.execute("SELECT count(*) FROM sessions WHERE session_id = ?",
                            [s]).fetchone() == (0,)
    store.close()


async def test_a_failing_projection_does_not_hold_back_the_others_on_its_stream(
        bus: Bus, tmp_path: Path) -> None:
    """The service reads each stream once for all its projections: when one of them raises,
    the others still apply the batch, and the broken one stays at its checkpoint."""
    sessions = next(cls for cls in PROJECTIONS if cls.name == "sessions")

    class Broken(sessions):  # type: ignore[misc, valid-type]
        name = "broken_sessions"
        tables = ("broken_sessions",)
        table = "broken_sessions"
        ddl = sessions.ddl.replace("sessions", "broken_sessions")

        def apply(self, db, event, entry):  # type: ignore[no-untyped-def]
            if isinstance(event, AssistantMessage):
                raise RuntimeError("bug in a projection")
            super().apply(db, event, entry)

    s, late = "p" + new_id(), "p" + new_id()
    await turn(bus, s, 1)
    # More than a batch after the broken event: the others must not advance a batch a retry.
    noise = [UserText(session_id="p" + new_id(), text="n") for _ in range(2 * BATCH + 10)]
    for i in range(0, len(noise), 200):
        await asyncio.gather(*(bus.publish(e) for e in noise[i:i + 200]))
    await turn(bus, late, 2)
    service = ProjectionService(bus, tmp_path)
    healthy = [p.name for p in service.projections]
    service.projections = [Broken(), *service.projections]
    await service.start()
    try:
        # The shared server's SESSIONS holds every earlier test's events too: a generous wait.
        await service.caught_up(timeout=60, only=healthy)
        with pytest.raises(TimeoutError):  # the broken one cannot have caught up
            await service.caught_up(timeout=1, only=["broken_sessions"])
    finally:
        await service.stop()
    assert service.errors >= 1
    assert row(tmp_path, s) == (3, 1, "a1")
    assert row(tmp_path, late) == (3, 1, "a2")
    store = ReadStore(store_path(tmp_path), [], read_only=True)
    try:
        stream_end = store.checkpoint("sessions", "SESSIONS")
        assert 0 <= store.checkpoint("broken_sessions", "SESSIONS") < stream_end
    finally:
        store.close()


async def test_rebuild_from_an_empty_directory_gives_identical_tables(bus: Bus, data_dir: Path,
                                                                      tmp_path: Path) -> None:
    for i in range(3):
        await turn(bus, "p" + new_id(), i)
        await account(bus, i)
    service = ProjectionService(bus, data_dir)
    await service.start()
    await service.caught_up()
    await service.stop()
    empty = tmp_path / "empty"
    empty.mkdir()
    counts = await rebuild(bus, store_path(empty))
    live = ReadStore(store_path(data_dir), [], read_only=True)
    fresh = ReadStore(store_path(empty), [], read_only=True)
    try:
        for cls in PROJECTIONS:
            for table in cls.tables:
                assert live.table(table) == fresh.table(table)
                assert counts[table] == len(fresh.table(table)) > 0
        assert live.table("_checkpoints") == fresh.table("_checkpoints")
    finally:
        live.close()
        fresh.close()


async def test_a_changed_projection_rebuilds_its_tables_from_the_log(bus: Bus, data_dir: Path) -> None:
    s = "p" + new_id()
    await turn(bus, s, 1)
    service = ProjectionService(bus, data_dir)
    await service.start()
    await service.caught_up()
    await service.stop()
    store = ReadStore(store_path(data_dir), [])
    # As a store written by an older vagent would be: another version, a stale column set.
    store.db.execute("UPDATE _versions SET version = 1 WHERE projection = 'sessions'")
    store.db.execute("DROP TABLE sessions")
    store.db.execute("CREATE TABLE sessions (session_id VARCHAR, events INTEGER)")
    store.close()
    service = ProjectionService(bus, data_dir)
    await service.start()
    await service.caught_up()
    await service.stop()
    assert row(data_dir, s) == (3, 1, "a1")  # rebuilt with today's columns, applied once
