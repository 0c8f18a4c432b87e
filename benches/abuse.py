"""`vagent bench abuse`: what one anonymous client doing its worst within the edge's limits
costs the other sessions and the process.

Normal sessions (`/ws`, typed turns to the echo LLM) talk in rounds. Baseline and attack
rounds alternate (A B B A …, so a trend in the machine's load falls on both alike); during
an attack round one anonymous client, from one address, at once: floods `/ws` sessions with
`user.text` of the longest allowed length at the per-connection message rate, does the same
with xiaozhi `listen detect`, sends bad frames and reconnects when closed, holds idle
sockets, trickles request heads (slowloris) and bodies, and posts malformed WebRTC offers.
Reported: the normal turns' times in either kind of round side by side (median, p90,
slowest, mean) and the slowdown, the process's resident memory growth over the whole run,
and the attacker's actions, the refusals it got (`error_<code>`: a flood's typed turns
beyond the session's turn limit are `too_many_turns`) and the process CPU they cost (attack
rounds' CPU time less the baseline rounds'). `--kinds text_flood` measures the text flood alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import websockets

from settings.config import EdgeSettings

QUESTION = "What is the weather like in Lisbon tomorrow?"
# What the attacker does (Attacker's methods). The floods are typed turns of the longest
# allowed length at the per-connection message rate: each would start (and interrupt) a
# turn, and beyond the session's turn limit (`edge.max_waiting_turns`, `max_turns_per_second`)
# is refused instead.
FLOODS = frozenset({"text_flood", "detect_flood"})
TURN_TIMEOUT = 30.0  # seconds a normal turn may take before it counts as starved
KINDS = FLOODS | {"bad_frames", "webrtc_offers", "idle", "slowloris", "slow_body"}


def rss_mib() -> float:
    """This process's resident memory now (the edge and the actors run in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Figures:
    baseline_ms: list[float] = field(default_factory=list)  # normal turns, baseline rounds
    attack_ms: list[float] = field(default_factory=list)  # normal turns, attack rounds
    baseline_cpu_s: float = 0.0  # process CPU time in baseline rounds …
    attack_cpu_s: float = 0.0  # … and in attack rounds
    baseline_wall_s: float = 0.0
    attack_wall_s: float = 0.0
    actions: dict[str, int] = field(default_factory=dict)  # what the attacker did
    unanswered: int = 0  # normal turns not answered within TURN_TIMEOUT (counted as that long)
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_end_mib: float = 0.0

    @property
    def baseline_p50_ms(self) -> float:
        return statistics.median(self.baseline_ms)

    @property
    def attack_p50_ms(self) -> float:
        return statistics.median(self.attack_ms)

    @property
    def slowdown(self) -> float:
        """How much slower a normal turn is on average under attack (0.1 is 10 %). The mean,
        not the median: turn times cluster at a few values (~0.4 s and ~0.9 s on a loaded
        2-core machine), and a median flips between clusters by chance."""
        return statistics.fmean(self.attack_ms) / statistics.fmean(self.baseline_ms) - 1

    @property
    def attacker_cpu_share(self) -> float:
        """The share of the process's time the attack took: the attack rounds' CPU seconds
        per wall second less the baseline rounds'."""
        return (self.attack_cpu_s / self.attack_wall_s) - (self.baseline_cpu_s / self.baseline_wall_s)

    @property
    def rss_growth_mib(self) -> float:
        return self.rss_peak_mib - self.rss_start_mib

    def turn_table(self) -> list[tuple[str, float, float]]:
        """The normal turns' times (ms) without and with the attack, side by side."""
        def p90(values: list[float]) -> float:
            return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]

        rows: list[tuple[str, Callable[[list[float]], float]]] = [
            ("p50", statistics.median), ("p90", p90), ("slowest", max), ("mean", statistics.fmean)]
        return [(name, round(of(self.baseline_ms), 1), round(of(self.attack_ms), 1))
                for name, of in rows]

    def report(self) -> dict[str, float]:
        return {"normal_turns": len(self.baseline_ms) + len(self.attack_ms),
                "unanswered": self.unanswered,
                "baseline_p50_ms": round(self.baseline_p50_ms, 1),
                "attack_p50_ms": round(self.attack_p50_ms, 1),
                "baseline_mean_ms": round(statistics.fmean(self.baseline_ms), 1),
                "attack_mean_ms": round(statistics.fmean(self.attack_ms), 1),
                "slowdown_pct": round(100 * self.slowdown, 1),
                "baseline_cpu_pct": round(100 * self.baseline_cpu_s / self.baseline_wall_s, 1),
                "attacker_cpu_pct": round(100 * self.attacker_cpu_share, 1),
                "attacker_actions": sum(v for k, v in self.actions.items() if k != "client_cpu_ms"),
                # the attacking process's own CPU per wall second of the attack rounds
                "client_cpu_pct": round(self.actions.get("client_cpu_ms", 0) / 10 / self.attack_wall_s, 1),
                "rss_start_mib": round(self.rss_start_mib, 1),
                "rss_growth_mib": round(self.rss_growth_mib, 1),
                "rss_end_mib": round(self.rss_end_mib, 1)}


# --- the normal sessions ---------------------------------------------------------------------

class Normal:
    """A `/ws` session that asks and waits for each answer, timing it."""

    def __init__(self, ws_url: str, address: str) -> None:
        self.ws_url = ws_url
        self.address = address  # a loopback address of its own: not the attacker's
        self.ws: Any = None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.ws_url + "/ws", max_size=None,
                                           local_addr=(self.address, 0))
        assert json.loads(await self.ws.recv())["type"] == "session"

    async def turn(self) -> float | None:
        """How long the answer took (ms), or None if none came within TURN_TIMEOUT."""
        started = time.perf_counter()
        await self.ws.send(json.dumps({"type": "user.text", "text": QUESTION}))
        try:
            async with asyncio.timeout(TURN_TIMEOUT):
                while json.loads(await self.ws.recv())["type"] != "assistant.message":
                    pass
        except TimeoutError:
            return None
        return (time.perf_counter() - started) * 1000

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


# --- the attacker ----------------------------------------------------------------------------

class Attacker:
    """One anonymous client (no token, one address) doing everything at once, within the limits."""

    def __init__(self, url: str, edge: EdgeSettings, *, sockets: int = 20, floods: int = 2,
                 kinds: frozenset[str] = KINDS) -> None:
        self.url = url
        self.ws_url = url.replace("http://", "ws://")
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.edge = edge
        self.sockets = sockets  # idle sockets held, and as many trickling heads and bodies
        self.floods = floods  # /ws and xiaozhi sessions flooding text, each
        self.kinds = kinds
        self.actions: dict[str, int] = {}
        self.long_text = " ".join(["hello"] * (edge.max_text_chars // 6))[:edge.max_text_chars]

    def did(self, kind: str) -> None:
        self.actions[kind] = self.actions.get(kind, 0) + 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        counts = {"text_flood": self.floods, "detect_flood": self.floods, "bad_frames": 1,
                  "webrtc_offers": 1, "idle": self.sockets, "slowloris": self.sockets // 4,
                  "slow_body": self.sockets // 4}
        loops: list[Callable[[], Awaitable[None]]] = [
            getattr(self, kind) for kind in sorted(self.kinds) for _ in range(counts[kind])]
        tasks = [asyncio.create_task(self._forever(loop)) for loop in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _forever(self, loop: Callable[[], Awaitable[None]]) -> None:
        while True:  # refused or closed: again, as an attacker would
            try:
                await loop()
            except (OSError, websockets.WebSocketException, httpx.HTTPError, TimeoutError):
                self.did("refused")
                await asyncio.sleep(0.05)

    async def _drain(self, ws: Any) -> None:
        """What the server answers, until it closes: its refusals are counted."""
        with contextlib.suppress(websockets.WebSocketException):
            async for message in ws:
                if isinstance(message, str) and '"error"' in message:
                    with contextlib.suppress(ValueError, AttributeError):
                        answer = json.loads(message)
                        if answer.get("type") == "error":
                            self.did(f"error_{answer.get('code')}")

    async def _paced(self, ws: Any, message: str, kind: str) -> None:
        """`message` over and over at just under the per-connection message rate; while the
        edge does not read, the sends wait for room in the buffers."""
        reader = asyncio.create_task(self._drain(ws))
        try:
            pause = 1 / (self.edge.max_messages_per_second * 0.9)
            while not reader.done():
                await ws.send(message)
                self.did(kind)
                await asyncio.sleep(pause)
        finally:
            reader.cancel()
            # Gone at once, as a client that stops: what it had sent and the edge had not read
            # yet is dropped with the connection, not handled in the next baseline round.
            ws.transport.abort()

    async def text_flood(self) -> None:
        async with websockets.connect(self.ws_url + "/ws", max_size=None) as ws:
            await ws.recv()
            await self._paced(ws, json.dumps({"type": "user.text", "text": self.long_text}), "ws_text")

    async def detect_flood(self) -> None:
        headers = {"Device-Id": "AA:BB:CC:DD:EE:66", "Client-Id": "9f8e7d6c-0000-4000-8000-00000000aaaa",
                   "Protocol-Version": "1"}
        async with websockets.connect(self.ws_url + "/xiaozhi/v1/", additional_headers=headers,
                                      max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "version": 1, "transport": "websocket",
                                      "audio_params": {"format": "opus", "sample_rate": 16000,
                                                       "channels": 1, "frame_duration": 60}}))
            hello = json.loads(await ws.recv())
            message = json.dumps({"session_id": hello.get("session_id", ""), "type": "listen",
                                  "state": "detect", "text": self.long_text})
            await self._paced(ws, message, "xiaozhi_detect")

    async def bad_frames(self) -> None:
        bad = ["{", "[]", '{"type": "user.text"}', '{"type": "nope"}', "x" * self.edge.max_frame_bytes,
               "[" * 5000 + "]" * 5000, '{"type": "user.text", "text": 5}']
        async with websockets.connect(self.ws_url + "/ws", max_size=None) as ws:
            await ws.recv()
            reader = asyncio.create_task(self._drain(ws))
            try:
                for n in range(1_000_000):
                    if reader.done():
                        break
                    await ws.send(bad[n % len(bad)])
                    self.did("bad_frame")
                    await asyncio.sleep(1 / (self.edge.max_messages_per_second * 0.9))
            finally:
                reader.cancel()

    async def webrtc_offers(self) -> None:
        from edge.webrtc.peer import MAX_SDP_CHARS

        head = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\n"
        # Every other one the costliest to refuse: as long as allowed, its last line the bad
        # one (naming that line parses the offer's prefixes again).
        heavy = (head + "a=x\r\n" * MAX_SDP_CHARS)[:MAX_SDP_CHARS - 8] + "\r\nc=IN\r\n"
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            for n in range(1_000_000):
                sdp = heavy if n % 2 else head + ("a=x\r\n" * (n % 50))
                await client.post("/webrtc/offer", json={"sdp": sdp, "type": "offer"})
                self.did("webrtc_offer")

    async def idle(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.did("idle_socket")
        try:
            await reader.read()  # until the server closes it
        finally:
            writer.close()

    async def slowloris(self) -> None:
        await self._trickle("slowloris", b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                            lambda n: f"X-Slow-{n}: y\r\n".encode())

    async def slow_body(self) -> None:
        await self._trickle("slow_body", b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
                            lambda n: b" ")

    async def _trickle(self, kind: str, head: bytes, piece: Callable[[int], bytes]) -> None:
        """`head`, then a `piece` every half second until the server closes the connection."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.did(kind)
        try:
            writer.write(head)
            for n in range(1_000_000):
                writer.write(piece(n))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        while await reader.read(4096):  # what it answers, until it closes
                            pass
                        return
        finally:
            writer.close()


# --- the attacker's own process --------------------------------------------------------------

def _attack(url: str, edge: EdgeSettings, sockets: int, floods: int, kinds: frozenset[str],
            control: Connection) -> None:
    """A child process's whole life: attack until told to stop, then say what it did (and
    the CPU time it took doing it, as `client_cpu_ms`)."""
    async def main() -> None:
        attacker = Attacker(url, edge, sockets=sockets, floods=floods, kinds=kinds)
        async with attacker.running():
            control.send("running")
            await asyncio.to_thread(control.recv)
        # Its own CPU time as an action, in ms: on a machine of few cores the attacking client
        # takes cores the server would have had, which the other turns' times show.
        control.send({**attacker.actions, "client_cpu_ms": round(time.process_time() * 1000)})

    asyncio.run(main())


@contextlib.asynccontextmanager
async def attacking(url: str, edge: EdgeSettings, into: dict[str, int], *, sockets: int,
                    floods: int, kinds: frozenset[str]) -> AsyncIterator[None]:
    """The attacker in a process of its own, as a remote client would be: this process's CPU
    time is then the server's alone, not also the attacking client's sends and parsing.
    What it did is added to `into` when it stops."""
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    child = spawn.Process(target=_attack, args=(url, edge, sockets, floods, kinds, theirs),
                          daemon=True)
    child.start()
    try:
        if not (await asyncio.to_thread(ours.poll, 60) and ours.recv() == "running"):
            raise RuntimeError("the attacking process did not start")
        yield
        ours.send("stop")
        if await asyncio.to_thread(ours.poll, 30):
            for kind, count in ours.recv().items():
                into[kind] = into.get(kind, 0) + count
    finally:
        await asyncio.to_thread(child.join, 10)
        if child.is_alive():
            child.kill()
            await asyncio.to_thread(child.join)


# --- the measurement -------------------------------------------------------------------------

async def measure(url: str, edge: EdgeSettings, *, normals: int = 4, rounds: int = 8,
                  turns: int = 10, sockets: int = 20, floods: int = 2,
                  kinds: frozenset[str] = KINDS, think: float = 1.0) -> Figures:
    """`rounds` rounds (half of them under attack, A B B A …) of `turns` turns by each of
    `normals` sessions, against the edge at `url` served by this process."""
    figures = Figures()
    ws_url = url.replace("http://", "ws://")
    # Each from an address of its own (127.0.0.0/8 is all loopback), as people are: the
    # per-address limits are the attacker's, not theirs.
    clients = [Normal(ws_url, f"127.0.0.{10 + n}") for n in range(normals)]
    await asyncio.gather(*(c.open() for c in clients))
    stop = asyncio.Event()

    async def sample_rss() -> None:
        while not stop.is_set():
            figures.rss_peak_mib = max(figures.rss_peak_mib, rss_mib())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await stop.wait()

    async def talk(client: Normal, into: list[float]) -> None:
        for _ in range(turns):
            took = await client.turn()
            if took is None:  # starved: the client asks again over a fresh session
                figures.unanswered += 1
                await client.close()
                await client.open()
            into.append(TURN_TIMEOUT * 1000 if took is None else took)
            # People pause between turns: without it the normal sessions alone would keep the
            # process saturated, and any other work would queue behind theirs. A second on
            # average, as the edge's turn rate for a session (`max_turns_per_second`) allows.
            # The pause varies, so that the sessions do not fall into step with anything periodic.
            await asyncio.sleep(think * (0.5 + random.random()))

    try:
        for client in clients:  # warm: the first turns load what every later one reuses
            await client.turn()
        figures.rss_start_mib = figures.rss_peak_mib = rss_mib()
        sampler = asyncio.create_task(sample_rss())
        for n in range(rounds):
            attack = n % 4 in (1, 2)  # A B B A: a linear drift weighs on both kinds alike
            into = figures.attack_ms if attack else figures.baseline_ms
            async with contextlib.AsyncExitStack() as stack:
                if attack:
                    await stack.enter_async_context(attacking(
                        url, edge, figures.actions, sockets=sockets, floods=floods, kinds=kinds))
                    await asyncio.sleep(0.5)  # its sockets open and its floods running
                wall, cpu = time.perf_counter(), time.process_time()
                await asyncio.gather(*(talk(c, into) for c in clients))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if attack:
                figures.attack_wall_s += wall
                figures.attack_cpu_s += cpu
            else:
                figures.baseline_wall_s += wall
                figures.baseline_cpu_s += cpu
        stop.set()
        await sampler
        figures.rss_end_mib = rss_mib()
    finally:
        stop.set()
        await asyncio.gather(*(c.close() for c in clients))
    return figures


async def bench_abuse(nats: str | None, *, normals: int = 4, rounds: int = 8,
                      turns: int = 10, kinds: str = "") -> dict[str, Any]:
    """The edge and the dialogue actor in this process, over an embedded temporary NATS
    unless `nats`, talking to the echo LLM in a process of its own; `kinds` the attacks
    (comma-separated names of `KINDS`, empty for all)."""
    chosen = frozenset(k.strip() for k in kinds.split(",") if k.strip()) or KINDS
    if chosen - KINDS:
        raise ValueError(f"unknown attacks {sorted(chosen - KINDS)}: known are {sorted(KINDS)}")
    from actors.dialogue.actor import Dialogue
    from actors.runtime import ActorHost
    from benches.bus import bench_nats
    from benches.dialogue import _start_echo
    from edge.server import EdgeServer
    from settings.config import Config
    from settings.llm import openai_provider

    echo, base_url = await asyncio.to_thread(_start_echo)
    config = Config()  # the default settings, whatever ./vagent.toml says
    config.llm.providers = [openai_provider(base_url)]
    try:
        async with bench_nats(nats) as (bus, _):
            with tempfile.TemporaryDirectory(prefix="vagent-bench-abuse-") as data:
                host = ActorHost(bus, [Dialogue], config)
                await host.start()
                edge = EdgeServer(bus, config, Path(data), port=0)
                await edge.start()
                try:
                    figures = await measure(edge.url, config.edge, normals=normals, rounds=rounds,
                                            turns=turns, kinds=chosen)
                finally:
                    await edge.stop()
                    await host.stop()
    finally:
        echo.terminate()
        echo.wait()
    return {**figures.report(), "actions": figures.actions, "turn_ms": figures.turn_table()}


def print_report(result: dict[str, Any]) -> None:
    actions = result.pop("actions")
    print(f"{'normal turns, ms':>18}  {'no attack':>10}  {'attack':>10}")
    for name, baseline, attack in result.pop("turn_ms"):
        print(f"{name:>18}  {baseline:>10,.1f}  {attack:>10,.1f}")
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    print(f"{'actions':>18}: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
