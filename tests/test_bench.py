"""The bus benchmark runs end to end; its speed goals are reported, never asserted."""

from __future__ import annotations

import math

from bus.server import EmbeddedServer
from cli.bench import RESULT_KEYS, bench_bus, print_report


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
