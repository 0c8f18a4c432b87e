"""`vagent up`: the whole stack in one process: NATS (embedded or external), every
actor, and the projections. Ctrl-C stops it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from actors.runtime import ActorHost
from bus.client import Bus
from bus.server import EmbeddedServer
from projections.runtime import ProjectionService, store_path

log = logging.getLogger("vagent.up")


async def up(*, nats: str | None, port: int, data_dir: Path, actors: list[str],
             ready: asyncio.Event | None = None) -> None:
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
    try:
        await bus.declare()
        host = ActorHost(bus, actors)
        await host.start()
        projections = ProjectionService(bus, data_dir)
        await projections.start()
        _banner(url, server, data_dir, actors)
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
        if host:
            await host.stop()
        if projections:
            await projections.stop()
        await bus.close()
        if supervisor:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if server:
            await asyncio.to_thread(server.stop)
        print("vagent: stopped", flush=True)


def _banner(url: str, server: EmbeddedServer | None, data_dir: Path, actors: list[str]) -> None:
    nats = f"{url}  (embedded nats-server, store {server.store_dir})" if server else f"{url}  (external)"
    lines = [
        "vagent is up",
        f"  NATS         {nats}",
        f"  data         {data_dir}",
        f"  actors       {', '.join(actors)}",
        f"  read models  {store_path(data_dir)}",
        "  try          vagent say \"hello\" --session s1"
        + ("" if url.endswith(":4222") else f" --nats {url}"),
        "  stop         Ctrl-C",
    ]
    print("\n".join(lines), flush=True)
