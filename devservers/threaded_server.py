"""An ASGI app served by uvicorn in a background thread: the local protocol servers
(`vagent echo-llm`, and the stand-ins for cloud providers the tests and benches run)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Literal, Protocol

import uvicorn


class ThreadedServer:
    def __init__(self, app: Any, port: int, *, lifespan: Literal["auto", "on", "off"] = "off") -> None:
        self.config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                     lifespan=lifespan)
        self._server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.config.port} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)


class Stoppable(Protocol):
    def stop(self) -> None: ...


def serve_until_interrupted(server: Stoppable, port: int, what: str) -> None:
    """Keep a started stand-in serving until Ctrl-C: `READY <port>` on stdout first (what a
    bench that started it waits for), then what it is on stderr."""
    print(f"READY {port}", flush=True)
    print(f"{what}; Ctrl-C to stop", file=sys.stderr)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
