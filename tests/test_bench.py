"""The bus benchmark runs end to end; its speed goals are reported, never asserted."""

from __future__ import annotations

import math

from benches.bus import RESULT_KEYS, bench_bus, print_report
from bus.server import EmbeddedServer


async def test_bench_bus_reports_every_figure(nats_server: EmbeddedServer, capsys) -> None:  # type: ignore[no-untyped-def]
    results = await bench_bus(nats_server.url, events=200, hops=50)
    assert set(RESULT_KEYS) <= results.keys()
    assert results["cores"] >= 1
    assert results["publish_awaited_per_s"] > 0
    assert results["publish_pipelined_per_s"] > 0
    assert 0 < results["hop_p50_ms"] <= results["hop_p95_ms"] <= results["hop_p99_ms"]
    assert results["hop_mean_ms"] > 0
    assert math.isnan(results["sync_always"])  # an external server's fsync policy is unknown
    print_report(results)
    assert "one hop" in capsys.readouterr().out


async def test_bench_dialogue_times_a_conversation_whose_history_grows(
        nats_server: EmbeddedServer, capsys) -> None:  # type: ignore[no-untyped-def]
    from benches.dialogue import bench_dialogue
    from benches.dialogue import print_report as print_dialogue

    results = await bench_dialogue(nats_server.url, turns=5, conversation=True)
    assert results["turns"] == 5 and results["sessions"] == "one conversation"
    assert 0 < results["first_delta_p50_ms"] <= results["first_delta_p95_ms"]
    assert results["first_delta_p50_ms"] <= results["first_sentence_p50_ms"]
    entries = await _bench_sessions(nats_server)
    assert max(entries.values()) >= 5 * 2  # every turn in one session: its log grew
    print_dialogue(results)
    assert "one conversation" in capsys.readouterr().out


async def _bench_sessions(nats_server: EmbeddedServer) -> dict[str, int]:
    from bus.client import Bus
    from bus.log import read

    bus = await Bus.connect(nats_server.url)
    try:
        counts: dict[str, int] = {}
        async for entry in read(bus, "SESSIONS", "vagent.session.*.evt.>", idle_timeout=0.5):
            if entry.subject.startswith("vagent.session.bench-"):
                session = entry.subject.split(".")[2]
                counts[session] = counts.get(session, 0) + 1
        return counts
    finally:
        await bus.close()
