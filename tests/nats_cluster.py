"""A real NATS JetStream cluster for tests: one nats-server per node, each with a config file
of its own, on loopback or on addresses of other (network-namespaced) hosts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import nats.errors
import nats.js.errors

from bus.errors import BusError
from bus.server import free_port, port_open, server_binary

T = TypeVar("T")

# What a cluster that is still electing leaders or forming answers with.
NOT_READY = (
    BusError,
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.APIError,
)


@dataclass
class Node:
    """One nats-server process of the cluster, configured by a file of its own. `wrap` runs
    it elsewhere (e.g. `ip netns exec <host>`), `host` is the address it listens on there."""

    name: str
    dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    wrap: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def conf(self) -> Path:
        return self.dir / f"{self.name}.conf"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    def configure(self, peers: Sequence[Node]) -> Path:
        self.conf.write_text(config_text(self, peers))
        return self.conf

    def start(self) -> None:
        self.proc = subprocess.Popen([*self.wrap, server_binary(), "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no leadership hand-off, exactly like a crashed machine."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


def config_text(node: Node, peers: Sequence[Node]) -> str:
    """The node's nats-server config: JetStream with a synced store, routes to every peer."""
    routes = ", ".join(f"nats-route://{p.host}:{p.cluster_port}" for p in peers if p is not node)
    # json.dumps quotes the paths, which NATS's config syntax reads as strings.
    return (
        f"server_name: {node.name}\n"
        f"listen: {node.host}:{node.port}\n"
        f"logfile: {json.dumps(str(node.log_file))}\n"
        "jetstream {\n"
        f"  store_dir: {json.dumps(str(node.dir / 'store'))}\n"
        # As in nats.conf: without it an ack only means "in the page cache".
        "  sync_interval: always\n"
        "}\n"
        "cluster {\n"
        "  name: vagent\n"
        f"  listen: {node.host}:{node.cluster_port}\n"
        f"  routes: [{routes}]\n"
        "}\n"
    )


def start_cluster(nodes: Sequence[Node], timeout: float = 10.0) -> None:
    """Configure and start every node; return once all client ports are open. The caller
    kills the nodes (also when this fails)."""
    for node in nodes:
        node.configure(nodes)
    for node in nodes:
        node.start()
    deadline = time.monotonic() + timeout
    while not all(port_open(n.host, n.port) for n in nodes):
        dead = [n for n in nodes if not n.alive()]
        if dead:
            raise AssertionError(f"{dead[0].name} exited:\n{dead[0].log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"cluster nodes did not open their client ports in {timeout}s")
        time.sleep(0.05)


def urls(nodes: Sequence[Node]) -> str:
    """The comma-separated URLs a vagent process is given with --nats."""
    return ",".join(n.url for n in nodes)


async def retry_until(what: str, deadline: float, op: Callable[[], Awaitable[T]]) -> T:
    """Run `op` until the cluster stops answering "not ready", or fail at `deadline`."""
    while True:
        try:
            return await op()
        except NOT_READY as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing at the deadline: {exc!r}") from None
            await asyncio.sleep(0.2)
