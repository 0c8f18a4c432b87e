"""Every guarantee of the bus, against a real nats-server."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bus.admin import delete_consumer, purge, stream_state
from bus.client import Bus, Message
from bus.consumer import ConsumerRunner, ConsumerSpec, Delivery
from bus.deadletter import dead_letters
from bus.errors import BatchError, ConflictError
from bus.log import LogCache, load, read
from bus.subjects import audio_in, event_type_filter, live, session_events
from schemas import AssistantDelta, Event, UserText, decode, new_id


def sid() -> str:
    return "t" + new_id()


async def count(bus: Bus, session_id: str) -> int:
    entries, _ = await load(bus, "session", session_id)
    return len(entries)


async def test_retried_publish_is_stored_once(bus: Bus) -> None:
    event = UserText(session_id=sid(), text="hello")
    first = await bus.publish(event)
    again = await bus.publish(event)  # a client retrying after a lost ack sends the same id
    assert not first.duplicate and again.duplicate
    assert again.seq == first.seq
    assert await count(bus, event.session_id) == 1


async def test_load_returns_one_aggregate_in_order(bus: Bus) -> None:
    s, other = sid(), sid()
    for i in range(5):
        await bus.publish(UserText(session_id=s, text=str(i)))
        await bus.publish(UserText(session_id=other, text="noise"))
    entries, last = await load(bus, "session", s)
    assert [e.event.text for e in entries] == ["0", "1", "2", "3", "4"]  # type: ignore[union-attr]
    assert last == entries[-1].seq
    assert await load(bus, "session", sid()) == ([], 0)


async def test_stale_conditional_append_is_rejected(bus: Bus) -> None:
    s = sid()
    stored = await bus.append(UserText(session_id=s, text="first"), expected_last_seq=0)
    # A second writer that read the empty session too is now stale.
    with pytest.raises(ConflictError):
        await bus.append(UserText(session_id=s, text="racer"), expected_last_seq=0)
    await bus.append(UserText(session_id=s, text="second"), expected_last_seq=stored.seq)
    # Other sessions do not count: the expectation is per aggregate subject wildcard.
    await bus.publish(UserText(session_id=sid(), text="elsewhere"))
    entries, _ = await load(bus, "session", s)
    assert [e.event.text for e in entries] == ["first", "second"]  # type: ignore[union-attr]
    with pytest.raises(ConflictError):
        await bus.append(UserText(session_id=s, text="stale"), expected_last_seq=stored.seq)


async def test_atomic_batch_stores_all_or_nothing(bus: Bus) -> None:
    s = sid()
    events = [UserText(session_id=s, text=str(i)) for i in range(3)]
    stored = await bus.append_batch(events)
    entries, last = await load(bus, "session", s)
    assert [e.event.id for e in entries] == [e.id for e in events]
    assert stored.seq == last
    # A conditional batch against a stale sequence stores none of its events.
    with pytest.raises(ConflictError):
        await bus.append_batch([UserText(session_id=s, text=f"late{i}") for i in range(3)],
                               expected_last_seq=0)
    assert await count(bus, s) == 3
    await bus.append_batch([UserText(session_id=s, text="ok")], expected_last_seq=last)
    assert await count(bus, s) == 4


async def test_batch_on_a_stream_without_atomic_is_refused(bus: Bus,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # DEADLETTER does not allow atomic batches: the refusal surfaces as BatchError, nothing stored.
    monkeypatch.setattr("bus.client.subject_of",
                        lambda event: "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.X.Y")
    before = (await stream_state(bus, "DEADLETTER")).messages
    with pytest.raises(BatchError):
        await bus.append_batch([UserText(session_id="x", text="a"), UserText(session_id="x", text="b")])
    assert (await stream_state(bus, "DEADLETTER")).messages == before


async def test_read_follows_from_a_sequence(bus: Bus) -> None:
    s = sid()
    for i in range(4):
        await bus.publish(UserText(session_id=s, text=str(i)))
    entries, _ = await load(bus, "session", s)
    tail = [e async for e in read(bus, "SESSIONS", f"vagent.session.{s}.evt.>",
                                  from_seq=entries[2].seq, idle_timeout=0.5)]
    assert [e.event.text for e in tail] == ["2", "3"]  # type: ignore[union-attr]


async def test_load_of_a_long_log_matches_the_stream_in_more_than_one_batch(bus: Bus) -> None:
    s, other = sid(), sid()
    for i in range(1100):  # over one direct-get batch of 1024
        await bus.publish(UserText(session_id=s, text=str(i)))
        if i % 100 == 0:
            await bus.publish(UserText(session_id=other, text="noise"))
    entries, last = await load(bus, "session", s)
    streamed = [e async for e in read(bus, "SESSIONS", f"vagent.session.{s}.evt.>",
                                      until_seq=last)]
    assert entries == streamed
    assert [e.event.text for e in entries] == [str(i) for i in range(1100)]  # type: ignore[union-attr]
    assert "Nats-Sequence" not in entries[0].headers  # direct-get bookkeeping is not the event's
    assert entries[0].headers["Nats-Msg-Id"] == entries[0].event.id  # type: ignore[union-attr]


async def test_log_cache_reads_only_what_was_appended_since(bus: Bus) -> None:
    s = sid()
    cache = LogCache(bus, size=2)
    for i in range(3):
        await bus.publish(UserText(session_id=s, text=str(i)))
    first, _ = await cache.load("session", s)
    await bus.publish(UserText(session_id=s, text="3"))
    second, last = await cache.load("session", s)
    assert (second, last) == await load(bus, "session", s)
    assert all(a is b for a, b in zip(first, second, strict=False))  # the old entries, kept
    assert [e.event.text for e in second] == ["0", "1", "2", "3"]  # type: ignore[union-attr]
    second.clear()  # a caller's copy: the cache's own is untouched
    assert len((await cache.load("session", s))[0]) == 4
    # Purged (a shorter log than the copy): read again, not served from memory.
    await purge(bus, "SESSIONS", session_events(s))
    assert await cache.load("session", s) == ([], 0)
    # Bounded: the least recently loaded aggregates are dropped.
    for other in (sid(), sid(), sid()):
        await bus.publish(UserText(session_id=other, text="x"))
        await cache.load("session", other)
    assert len(cache._logs) == 2


# --- consumers -------------------------------------------------------------------------


def spec_for(session_id: str, **kw: object) -> ConsumerSpec:
    return ConsumerSpec(stream="SESSIONS", durable="c" + new_id(),
                        subjects=(f"vagent.session.{session_id}.evt.user.text",), **kw)  # type: ignore[arg-type]


async def run_until(runner: ConsumerRunner, condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    finally:
        runner.stop()
        await task


async def letters_for(bus: Bus, durable: str, timeout: float = 5.0) -> list:  # type: ignore[type-arg]
    """The consumer's dead letters, once JetStream has stored its advisory (asynchronously)."""
    async with asyncio.timeout(timeout):
        while True:
            letters = [d for d in await dead_letters(bus, limit=10_000) if d.consumer == durable]
            if letters:
                return letters
            await asyncio.sleep(0.05)


async def consumer_state(bus: Bus, spec: ConsumerSpec) -> tuple[int, int]:
    info = await bus.js.consumer_info(spec.stream, spec.durable)
    return info.num_ack_pending, info.num_pending


async def test_ack_only_after_emitted_event_is_durable(bus: Bus) -> None:
    s = sid()
    spec = spec_for(s)
    observed: list[tuple[int, int]] = []

    async def handler(event: Event, d: Delivery) -> None:
        observed.append(await consumer_state(bus, spec))  # still unacked while handling
        await bus.publish(UserText(session_id=s + "x", text="effect", causation_id=event.id))
        observed.append(await consumer_state(bus, spec))  # effect durable, still unacked

    await bus.publish(UserText(session_id=s, text="cause"))
    runner = ConsumerRunner(bus, spec, handler)
    await run_until(runner, lambda: runner.handled == 1)
    assert observed == [(1, 0), (1, 0)]
    assert await count(bus, s + "x") == 1
    await asyncio.sleep(0.1)
    assert await consumer_state(bus, spec) == (0, 0)  # acked after the handler finished


async def test_failing_handler_is_retried_with_backoff_then_succeeds(bus: Bus) -> None:
    s = sid()
    spec = spec_for(s, max_deliver=5, backoff=(0.2, 0.4))
    seen: list[tuple[int, float]] = []

    async def handler(event: Event, d: Delivery) -> None:
        seen.append((d.num_delivered, asyncio.get_running_loop().time()))
        if d.num_delivered < 3:
            raise RuntimeError("transient")

    await bus.publish(UserText(session_id=s, text="x"))
    runner = ConsumerRunner(bus, spec, handler)
    await run_until(runner, lambda: runner.handled == 1)
    assert [n for n, _ in seen] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38  # nak delays grow with deliveries
    assert runner.failed == 2


async def test_undecodable_message_is_terminated_and_dead_lettered_never_looping(bus: Bus) -> None:
    s = sid()
    spec = spec_for(s)
    calls: list[Event] = []

    async def handler(event: Event, d: Delivery) -> None:
        calls.append(event)

    subject = f"vagent.session.{s}.evt.user.text"
    await bus.js.publish(subject, b"\x93not-an-event")
    await bus.publish(UserText(session_id=s, text="valid"))
    runner = ConsumerRunner(bus, spec, handler)
    await run_until(runner, lambda: runner.handled == 1 and runner.terminated == 1)
    await asyncio.sleep(1.0)  # long enough for a redelivery, were there one
    assert runner.terminated == 1 and [c.text for c in calls] == ["valid"]  # type: ignore[attr-defined]
    assert await consumer_state(bus, spec) == (0, 0)
    letters = await letters_for(bus, spec.durable)
    assert len(letters) == 1
    assert letters[0].kind == "terminated" and letters[0].subject == subject
    assert letters[0].reason.startswith("undecodable")


async def test_handler_failing_every_time_ends_in_a_dead_letter(bus: Bus) -> None:
    s = sid()
    spec = spec_for(s, max_deliver=3, backoff=(0.05,))

    async def handler(event: Event, d: Delivery) -> None:
        raise ValueError("poison")

    await bus.publish(UserText(session_id=s, text="x"))
    runner = ConsumerRunner(bus, spec, handler)
    await run_until(runner, lambda: runner.terminated == 1)
    letters = await letters_for(bus, spec.durable)
    assert len(letters) == 1
    assert letters[0].deliveries == 3 and "poison" in letters[0].reason
    assert letters[0].event_type == "user.text"


async def test_unacked_message_past_max_deliver_is_dead_lettered(bus: Bus) -> None:
    # A worker that dies mid-handling never acks: JetStream redelivers after ack_wait,
    # and after max_deliver its own advisory lands in DEADLETTER.
    s = sid()
    spec = spec_for(s, max_deliver=2, ack_wait=0.5)
    from bus.consumer import ensure_consumer

    await ensure_consumer(bus, spec)
    await bus.publish(UserText(session_id=s, text="x"))
    psub = await bus.js.pull_subscribe_bind(spec.durable, stream="SESSIONS")
    for _ in range(2):
        msgs = await psub.fetch(1, timeout=3)
        assert len(msgs) == 1  # delivered, never acked
    # The worker (restarted) keeps pulling; JetStream refuses a third delivery.
    with pytest.raises(TimeoutError):
        await psub.fetch(1, timeout=1.5)
    await psub.unsubscribe()
    letters = await letters_for(bus, spec.durable)
    assert [(d.kind, d.deliveries) for d in letters] == [("max_deliveries", 2)]


async def test_graceful_stop_finishes_the_in_flight_message(bus: Bus) -> None:
    s = sid()
    spec = spec_for(s)
    started, finished = asyncio.Event(), asyncio.Event()

    async def handler(event: Event, d: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.set()

    await bus.publish(UserText(session_id=s, text="x"))
    runner = ConsumerRunner(bus, spec, handler)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    runner.stop()
    await task
    assert finished.is_set() and runner.handled == 1
    assert await consumer_state(bus, spec) == (0, 0)


async def test_one_session_in_order_others_concurrently(bus: Bus) -> None:
    a, b = sid(), sid()
    spec = ConsumerSpec(stream="SESSIONS", durable="c" + new_id(),
                        subjects=(event_type_filter("session", "user.text"),))
    log: list[str] = []
    active: set[str] = set()
    overlap = False

    async def handler(event: Event, d: Delivery) -> None:
        nonlocal overlap
        if event.session_id not in (a, b):  # type: ignore[attr-defined]
            return
        overlap = overlap or (len(active) > 0 and event.session_id not in active)  # type: ignore[attr-defined]
        active.add(event.session_id)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        log.append(event.text)  # type: ignore[attr-defined]
        active.discard(event.session_id)  # type: ignore[attr-defined]

    for i in range(4):
        await bus.publish(UserText(session_id=a, text=f"a{i}"))
        await bus.publish(UserText(session_id=b, text=f"b{i}"))
    runner = ConsumerRunner(bus, spec, handler, concurrency=8)
    await run_until(runner, lambda: len(log) == 8, timeout=20)
    assert [x for x in log if x[0] == "a"] == ["a0", "a1", "a2", "a3"]
    assert [x for x in log if x[0] == "b"] == ["b0", "b1", "b2", "b3"]
    assert overlap  # the two sessions did run at the same time
    await delete_consumer(bus, "SESSIONS", spec.durable)


# --- core NATS --------------------------------------------------------------------------


async def test_live_and_audio_subjects_stay_off_the_log(bus: Bus) -> None:
    s = sid()
    got: list[Message] = []

    async def collect(m: Message) -> None:
        got.append(m)

    sub = await bus.subscribe(f"vagent.session.{s}.>", collect)
    await bus.publish_live(AssistantDelta(session_id=s, text="tok"))
    await bus.publish_core(audio_in(s), b"\x00\x01" * 160)
    await bus.flush()
    async with asyncio.timeout(5):
        while len(got) < 2:
            await asyncio.sleep(0.01)
    await sub.stop()
    assert got[0].subject == live(s, "assistant.delta")
    assert decode(got[0].data) == AssistantDelta(id=decode(got[0].data).id,
                                                 ts=decode(got[0].data).ts, session_id=s, text="tok")
    assert got[1].subject == audio_in(s) and len(got[1].data) == 320
    assert await count(bus, s) == 0


async def test_retried_conditional_append_is_not_a_false_conflict(bus: Bus) -> None:
    # An append stored whose ack was lost is retried with the same event: it must
    # come back as the stored duplicate, not as another writer's conflict.
    s = sid()
    event = UserText(session_id=s, text="once")
    first = await bus.append(event, expected_last_seq=0)
    again = await bus.append(event, expected_last_seq=0)
    assert again.duplicate and again.seq == first.seq
    assert await count(bus, s) == 1
    with pytest.raises(ConflictError):
        await bus.append(UserText(session_id=s, text="other"), expected_last_seq=0)


async def test_unreachable_nats_is_a_clear_error() -> None:
    from bus.errors import BusError
    from bus.server import free_port

    with pytest.raises(BusError, match="cannot reach NATS at"):
        await Bus.connect(f"nats://127.0.0.1:{free_port()}", timeout=0.5)


async def test_a_bucket_reads_whole_every_time_and_its_readers_leave_no_consumers(bus: Bus) -> None:
    from bus import kv

    bucket = "test_" + new_id().lower()
    await bus.js.create_key_value(bucket=bucket)
    try:
        assert await kv.entries(bus, bucket) == {}  # empty: answered at once, no consumer made
        for name in ("a", "b", "c", "d"):
            await kv.put(bus, bucket, name, name.encode() * 3)
        await kv.delete(bus, bucket, "c")
        assert await kv.remove(bus, bucket, "d")
        wanted = {"a": b"aaa", "b": b"bbb"}
        # Many readers at once, as a busy host's actors are: every read sees every key.
        for _ in range(10):
            reads = await asyncio.gather(*(kv.items(bus, bucket) for _ in range(20)))
            assert all(read == wanted for read in reads), reads
        entries = await kv.entries(bus, bucket)
        assert {k: e.value for k, e in entries.items()} == wanted
        assert entries["a"].revision < entries["b"].revision
        # Their consumers go with them: readers every few seconds must not pile them up.
        stream = "KV_" + bucket
        async with asyncio.timeout(60):
            while (await bus.js.stream_info(stream)).state.consumer_count:
                await asyncio.sleep(0.5)
    finally:
        await bus.js.delete_key_value(bucket)
