"""What the benches share: a NATS server to measure on, and percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from bus.client import Bus
from bus.server import EmbeddedServer, free_port


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile: always an observed value, monotonic in p, fine for n = 1."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@contextlib.asynccontextmanager
async def bench_nats(url: str | None) -> AsyncIterator[tuple[Bus, bool]]:
    """A declared bus on `url`, or on a temporary embedded server when None (then True)."""
    with tempfile.TemporaryDirectory(prefix="vagent-bench-") as tmp:
        server: EmbeddedServer | None = None
        if url is None:
            server = EmbeddedServer(Path(tmp) / "store", port=free_port())
            await asyncio.to_thread(server.start)
            url = server.url
        try:
            bus = await Bus.connect(url, name="vagent-bench")
            try:
                await bus.declare()
                yield bus, server is not None
            finally:
                await bus.close()
        finally:
            if server is not None:
                await asyncio.to_thread(server.stop)
