"""`vagent edge` and `vagent projections serve`: one part of the stack each, until Ctrl-C."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from bus.client import Bus
from edge.server import EdgeServer
from hosting import stack
from hosting.loop import Host
from projections.runtime import ProjectionService
from settings.config import Config
from telemetry import tracing


async def serve_edge(nats: str | None, data_dir: Path, config: Config, host: str | None,
                     port: int | None) -> None:
    async with Host() as parts:
        if tracing.setup(config.telemetry.otlp_endpoint, config.telemetry.service_name, ("edge",)):
            parts.on_stop(partial(asyncio.to_thread, tracing.shutdown))  # last: every span ended
        bus = await Bus.connect(nats, name="vagent-edge")
        parts.on_stop(bus.close)
        await bus.declare()
        edge = EdgeServer(bus, config, data_dir, host=host, port=port)
        await edge.start()
        parts.on_stop(edge.stop)
        recorded = stack.record(nats_url=bus.url, data_dir=data_dir, edge_url=edge.url)
        parts.on_stop(partial(asyncio.to_thread, stack.forget, recorded))
        print(f"vagent edge: web page {edge.url}/  API {edge.url}/api/v1/  "
              f"xiaozhi {edge.ws_url}/xiaozhi/v1/  WebSocket {edge.ws_url}/ws", flush=True)
        await parts.wait()


async def serve_projections(nats: str | None, data_dir: Path) -> None:
    async with Host() as parts:
        bus = await Bus.connect(nats, name="vagent-projections")
        parts.on_stop(bus.close)
        await bus.declare()
        service = ProjectionService(bus, data_dir)
        await service.start()
        parts.on_stop(service.stop)
        recorded = stack.record(nats_url=bus.url, data_dir=data_dir)
        parts.on_stop(partial(asyncio.to_thread, stack.forget, recorded))
        print(f"vagent projections: serving {service.path}", flush=True)
        await parts.wait()
