"""`vagent edge` and `vagent projections serve`: one part of the stack each, until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from bus.client import Bus
from edge.server import EdgeServer
from projections.runtime import ProjectionService
from settings.config import load


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_edge(nats: str | None, data_dir: Path, host: str | None, port: int | None) -> None:
    bus = await Bus.connect(nats, name="vagent-edge")
    try:
        await bus.declare()
        edge = EdgeServer(bus, load(), data_dir, host=host, port=port)
        await edge.start()
        print(f"vagent edge: web page {edge.url}/  API {edge.url}/api/v1/  "
              f"xiaozhi {edge.ws_url}/xiaozhi/v1/  WebSocket {edge.ws_url}/ws", flush=True)
        try:
            await _until_signal()
        finally:
            await edge.stop()
    finally:
        await bus.close()


async def serve_projections(nats: str | None, data_dir: Path) -> None:
    bus = await Bus.connect(nats, name="vagent-projections")
    try:
        await bus.declare()
        service = ProjectionService(bus, data_dir)
        await service.start()
        print(f"vagent projections: serving {service.path}", flush=True)
        try:
            await _until_signal()
        finally:
            await service.stop()
    finally:
        await bus.close()
