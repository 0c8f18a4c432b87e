"""Scale out on the engine: actors on other hosts, NATS the only link between them.

Three hosts, each a Linux network namespace with an address of its own on one bridge, run a
three-node JetStream cluster (one node each). Host A runs the edge alone; hosts B and C each
run a dialogue actor (answering with their own echo LLM). A client drives typed turns over
/ws to the edge and checks, by the dialogues' own /metrics, that both worker hosts took
turns. Then every process of host B (its dialogue, its LLM and its NATS node) is killed -9
in the middle of a run: each acknowledged turn must still be answered, exactly once, by C.

The commands and the cluster config are the ones docs/operations.md shows for a multi-host
deployment ("Several hosts"); change them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bus.client import Bus
from bus.log import load
from tests.nats_cluster import Node, config_text, retry_until, start_cluster, urls
from tests.procs import Proc

PREFIX = "vg77-"  # every namespace of this test, so a crashed run's are found and removed
HUB = PREFIX + "hub"  # holds the bridge: the "switch" the hosts are plugged into
ROOT_LINK = PREFIX + "root"  # the test's own leg on the bridge, in the root namespace
CLIENT_ADDRESS = "10.77.0.254/24"
HOSTS = {"a": "10.77.0.1", "b": "10.77.0.2", "c": "10.77.0.3"}
WORKERS = ("b", "c")
NATS_PORT, ROUTE_PORT, EDGE_PORT, METRICS_PORT, LLM_PORT = 4222, 6222, 8000, 9100, 8080
SESSIONS = 20
SHARED_TURNS = 2  # per session, both workers up
FAULT_TURNS = 3  # per session, one worker killed after KILL_AFTER of them were acknowledged
KILL_AFTER = 15
ANSWER_WAIT = 40.0  # seconds a turn may take: a dead host's turn waits for ack_wait first

NATS = ",".join(f"nats://{address}:{NATS_PORT}" for address in HOSTS.values())

# The deployment docs/operations.md shows ("Several hosts"), which this test runs as written:
# the environment of every vagent process, its settings file, and each host's commands.
SHARED_ENV = {
    "VAGENT_REPLICAS": "3",
    "VAGENT_JWT_SECRET": "a-test-secret-shared-by-every-host-0123456789",
    # A dead worker's unacknowledged turn is redelivered to a live one after this many seconds.
    "VAGENT_ACK_WAIT": "5",
}
# Listening on every address: the edge for its clients, the actors' /metrics for a scraper.
# The turn limits are raised because every client of this test comes from one address.
SETTINGS = """\
[edge]
host = "0.0.0.0"
max_turns_per_address_second = 50
turn_burst = 10
"""
EDGE_COMMANDS = {"vagent edge --nats $NATS --port 8000": "vagent edge: web page"}
WORKER_ENV = {"OPENAI_BASE_URL": f"http://127.0.0.1:{LLM_PORT}/v1"}
WORKER_COMMANDS = {
    "vagent echo-llm --port 8080": "OpenAI-compatible echo server at",
    "vagent actor run dialogue --nats $NATS --metrics-port 9100": "actor dialogue running on",
}
DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def in_host(name: str) -> list[str]:
    return ["ip", "netns", "exec", PREFIX + name]


def kill_host(namespace: str) -> list[int]:
    """SIGKILL every process in the namespace, as a machine losing power; the pids killed."""
    pids = [int(p) for p in ip("netns", "pids", namespace, check=False).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def remove_network() -> None:
    """Remove every namespace of this test and whatever runs in it (also a crashed run's)."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    ours = [n for n in names if n.startswith(PREFIX)]
    for namespace in ours:
        kill_host(namespace)
    for namespace in ours:
        # A namespace's veths go with it, and with them their peers on the bridge.
        ip("netns", "del", namespace, check=False)
    ip("link", "del", ROOT_LINK, check=False)


def build_network() -> None:
    ip("netns", "add", HUB)
    ip("-n", HUB, "link", "add", "br0", "type", "bridge")
    ip("-n", HUB, "link", "set", "br0", "up")
    for name, address in HOSTS.items():
        namespace = PREFIX + name
        ip("netns", "add", namespace)
        ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", f"port-{name}",
           "netns", HUB)
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")  # the worker's LLM listens on loopback
        ip("-n", HUB, "link", "set", "dev", f"port-{name}", "master", "br0", "up")
    ip("link", "add", ROOT_LINK, "type", "veth", "peer", "name", "port-client", "netns", HUB)
    ip("addr", "add", CLIENT_ADDRESS, "dev", ROOT_LINK)
    ip("link", "set", ROOT_LINK, "up")
    ip("-n", HUB, "link", "set", "dev", "port-client", "master", "br0", "up")


@dataclass
class Deployment:
    nodes: dict[str, Node]
    dir: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def nats(self) -> str:
        return urls(list(self.nodes.values()))

    def start(self, host: str, command: str, **env: str) -> Proc:
        """One of the documented commands, on `host` with the documented environment and its
        own data directory."""
        words = shlex.split(command.replace("$NATS", NATS))
        assert words[0] == "vagent", command
        proc = Proc(words[1:], wrap=in_host(host), VAGENT_CONFIG=str(self.dir / "vagent.toml"),
                    VAGENT_DATA_DIR=str(self.dir / host / "vagent"), **SHARED_ENV, **env)
        self.procs.append(proc)
        return proc


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    remove_network()  # a previous run killed before its finalizer left them
    nodes = {}
    for n, (name, address) in enumerate(HOSTS.items(), 1):
        d = tmp_path / name
        d.mkdir()
        nodes[name] = Node(f"n{n}", d, host=address, port=NATS_PORT, cluster_port=ROUTE_PORT,
                           wrap=in_host(name))
    (tmp_path / "vagent.toml").write_text(SETTINGS)
    deployment = Deployment(nodes, tmp_path)
    try:
        build_network()
        start_cluster(list(nodes.values()))
        yield deployment
    finally:
        remove_network()
        for node in nodes.values():
            node.kill()  # reaps it (already dead with its namespace)
        for proc in deployment.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


@dataclass
class Tally:
    sent: int = 0
    acknowledged: int = 0
    answered: int = 0
    refused: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)  # every assistant.message seen

    def line(self) -> str:
        duplicated = sum(n - 1 for n in self.answers.values() if n > 1)
        return (f"sent {self.sent} / acknowledged {self.acknowledged} / answered {self.answered} "
                f"/ duplicated {duplicated} / lost {len(self.lost)} / refused {len(self.refused)}")


class Client:
    """One /ws session, as a typing user: a turn, its answer, the next."""

    def __init__(self, ws: Any, tally: Tally) -> None:
        self.ws = ws
        self.tally = tally
        self.session_id = ""
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "assistant.message":
                    self.tally.answers[message["text"]] += 1
                await self.inbox.put(message)

    async def next(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def turn(self, text: str) -> None:
        await self.ws.send(json.dumps({"type": "user.text", "text": text}))
        self.tally.sent += 1
        acknowledged = False
        try:
            async with asyncio.timeout(ANSWER_WAIT):
                while True:
                    message = await self.next()
                    if message["type"] == "user.text" and message["text"] == text:
                        acknowledged = True
                        self.tally.acknowledged += 1
                    elif message["type"] == "error" and not acknowledged:
                        self.tally.refused.append(f"{text}: {message['code']}")
                        return
                    elif message["type"] == "assistant.message" and message["text"] == echo(text):
                        self.tally.answered += 1
                        return
        except TimeoutError:
            self.tally.lost.append(text)


def echo(text: str) -> str:
    return f"You said: {text}."


@contextlib.asynccontextmanager
async def clients(url: str, tally: Tally) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(SESSIONS):
            client = Client(await stack.enter_async_context(websockets.connect(url)), tally)
            hello = await client.next()
            assert hello["type"] == "session", hello
            client.session_id = hello["session_id"]
            out.append(client)
        yield out
        for client in out:
            await client.ws.close()
            await client.reader


async def turns_started(address: str) -> int:
    """Turns the dialogue on this host started, by its own /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{address}:{METRICS_PORT}/metrics", timeout=5)).text
    found = re.findall(r'^vagent_turns_total\{input="text"\} (\S+)$', text, re.MULTILINE)
    return int(float(found[0])) if found else 0


@pytest.mark.slow
async def test_workers_on_other_hosts_share_turns_and_a_dead_host_loses_none(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    d = deployment
    monkeypatch.setenv("VAGENT_REPLICAS", "3")  # what this test's own Bus declares
    deadline = time.monotonic() + 30
    bus = await Bus.connect(urls([d.nodes["a"], d.nodes["c"]]), name="hosts-test")
    try:
        # The vagent processes would give up on a cluster still electing its meta leader.
        await retry_until("JetStream meta leader", deadline, bus.js.account_info)
        await retry_until("declare R3 streams", deadline, bus.declare)

        assert d.nats == NATS
        started = [(d.start("a", command), ready) for command, ready in EDGE_COMMANDS.items()]
        for host in WORKERS:
            started += [(d.start(host, command, **WORKER_ENV), ready)
                        for command, ready in WORKER_COMMANDS.items()]
        await asyncio.gather(*(asyncio.to_thread(p.wait_for, ready, 60) for p, ready in started))

        url = f"ws://{HOSTS['a']}:{EDGE_PORT}/ws"
        shared = Tally()
        fault = Tally()
        async with clients(url, shared) as sessions:
            # Both workers up: the turns are spread over them.
            for t in range(SHARED_TURNS):
                await asyncio.gather(*(c.turn(f"session {i} turn {t}")
                                       for i, c in enumerate(sessions)))
            per_host = {h: await turns_started(HOSTS[h]) for h in WORKERS}
            print(f"\nboth workers up: {shared.line()}; turns started per host {per_host}")
            assert shared.answered == shared.sent == SESSIONS * SHARED_TURNS, shared.line()
            assert sum(per_host.values()) == shared.sent, per_host
            assert all(n > 0 for n in per_host.values()), f"a worker host took no turn: {per_host}"

            # Host B dies with turns in flight; the sessions go on typing.
            for c in sessions:
                c.tally = fault
            c_before = await turns_started(HOSTS["c"])
            killed: list[int] = []
            acked_at_kill = 0
            in_flight: list[int] = []  # acknowledged, not yet answered, when b died

            async def killer() -> None:
                nonlocal acked_at_kill
                while fault.acknowledged < KILL_AFTER:
                    await asyncio.sleep(0.01)
                acked_at_kill = fault.acknowledged
                in_flight.append(fault.acknowledged - fault.answered)
                killed.extend(kill_host(PREFIX + "b"))

            async def typing(i: int, c: Client) -> None:
                for t in range(SHARED_TURNS, SHARED_TURNS + FAULT_TURNS):
                    await c.turn(f"session {i} turn {t}")

            kill = asyncio.create_task(killer())
            await asyncio.gather(*(typing(i, c) for i, c in enumerate(sessions)))
            await kill
            c_after = await turns_started(HOSTS["c"])
        print(f"host b killed (pids {killed}) at {acked_at_kill} acknowledged, {in_flight[0]} of "
              f"them unanswered: {fault.line()}; "
              f"turns started on c during the run: {c_after - c_before}")

        assert len(killed) >= 3, f"host b's dialogue, LLM and NATS node were not all killed: {killed}"
        assert acked_at_kill < fault.sent, "host b died after the last turn: nothing was tested"
        assert in_flight[0] > 0, "host b died with no turn in flight"
        assert not fault.lost, f"acknowledged, never answered: {fault.lost}"
        assert not fault.refused, fault.refused
        assert fault.acknowledged == fault.answered == fault.sent == SESSIONS * FAULT_TURNS
        # What came after the kill, C took alone.
        assert c_after - c_before >= fault.sent - acked_at_kill, (c_before, c_after)
        # Exactly once, as the clients saw it and as the log holds it.
        for tally in (shared, fault):
            assert all(n == 1 for n in tally.answers.values()), tally.answers.most_common(3)
        for i, c in enumerate(sessions):
            entries, _ = await retry_until("read a session", time.monotonic() + 20,
                                           lambda c=c: load(bus, "session", c.session_id))
            answers = Counter(e.event.text for e in entries
                              if e.event is not None and e.event.type == "assistant.message")
            expected = {echo(f"session {i} turn {t}") for t in range(SHARED_TURNS + FAULT_TURNS)}
            assert answers == Counter(expected), (c.session_id, answers)
    finally:
        await bus.close()


def test_the_documented_deployment_is_the_one_tested() -> None:
    section = DOC.read_text().split("### Several hosts", 1)[1].split("\n## ", 1)[0]
    nodes = [Node(f"n{n}", Path("/var/lib/nats"), host=address, port=NATS_PORT,
                  cluster_port=ROUTE_PORT) for n, address in enumerate(HOSTS.values(), 1)]
    expected = [
        config_text(nodes[1], nodes), SETTINGS, f"export NATS={NATS}",
        *(f"export {k}={v}" for k, v in SHARED_ENV.items() if k != "VAGENT_JWT_SECRET"),
        "export VAGENT_JWT_SECRET=", *(f"export {k}={v}" for k, v in WORKER_ENV.items()),
        *EDGE_COMMANDS, *WORKER_COMMANDS,
    ]
    missing = [text for text in expected if text not in section]
    assert not missing, f"docs/operations.md's Several hosts lacks what this test runs: {missing}"
