"""Serving the edge app with uvicorn inside the caller's event loop (so it shares the
bus connection of `vagent up`), and `vagent edge` on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from bus.client import Bus
from edge.app import create_app
from edge.guard import FirstMessageTimeout, guarded_protocol
from edge.realtime.images import largest_frame
from edge.services import Services
from settings.config import Config
from telemetry import metrics

log = logging.getLogger("vagent.edge")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the host process (vagent up / vagent edge) owns the signals


class EdgeServer:
    def __init__(self, bus: Bus, config: Config, data_dir: Path, *, host: str | None = None,
                 port: int | None = None) -> None:
        metrics.configure(config)
        self.services = Services(bus, config, data_dir)
        self.app = create_app(self.services)
        self.host = host or config.edge.host
        self.port = config.edge.port if port is None else port
        self._server = _Server(uvicorn.Config(FirstMessageTimeout(self.app, config.edge),
                                              host=self.host, port=self.port, lifespan="off",
                                              log_level="warning", access_log=False,
                                              server_header=False,
                                              # the client address is the socket's unless
                                              # auth.trust_forwarded_for says otherwise
                                              proxy_headers=False,
                                              # h11 with a header deadline and every socket
                                              # counted (edge/guard.py)
                                              http=guarded_protocol(config.edge),
                                              ws_max_size=largest_frame(config) * 2))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        await self.services.assistants.ensure_default()
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raise why it could not start (port taken, …)
                raise RuntimeError(f"the edge did not start on {self.url}")
            await asyncio.sleep(0.01)
        if self.port == 0:
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
        if self.services.links.leases is not None:  # bound: the previous edge here is gone
            await self.services.links.leases.start(self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting real-time clients, tell the connected ones and record their
        sessions' end, then let uvicorn finish the requests in flight."""
        self.services.draining = True
        await self.services.links.close_all("server_shutdown")
        if self.services.links.leases is not None:
            await self.services.links.leases.stop()
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        self.services.accounts.hasher.close()
