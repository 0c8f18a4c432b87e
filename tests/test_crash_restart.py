"""Crash-only restarts: a `vagent up` killed by SIGKILL leaves no child behind, starts
again on the same ports and data dir, and the sessions its edge held are ended (`edge_lost`)
and resumable instead of refused as connected for ever."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import websockets

from bus import kv
from bus.child import ChildProcess, process_cmdline, spawn
from bus.client import Bus
from bus.errors import BusError
from bus.log import last_event, load
from bus.server import EmbeddedServer, free_port, port_open
from devservers.echo_llm import OpenAIServer
from edge.realtime.leases import EDGES, LEASES, EdgeBeat, Lease, SessionLeases, lease_key
from schemas import SessionEnded, SessionStarted, new_id
from tests.api_harness import Api
from tests.procs import ROOT, Proc, vagent


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _nats_server_pid(port: int) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            cmd = process_cmdline(int(entry)) or [""]
            if Path(cmd[0]).name == "nats-server" and str(port) in cmd:
                return int(entry)
    raise AssertionError(f"no nats-server on port {port}")


async def _until(ws: Any, kind: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                return message


@pytest.mark.slow
async def test_a_killed_vagent_up_starts_again_and_its_sessions_are_ended_and_resumable(
        tmp_path: Path) -> None:
    port, edge_port = free_port(), free_port()
    args = ["up", "--port", str(port), "--data-dir", str(tmp_path), "--edge-port", str(edge_port),
            "--actors", "tools"]
    ws_url = f"ws://127.0.0.1:{edge_port}/ws"
    first = Proc(args)
    second: Proc | None = None
    try:
        await asyncio.to_thread(first.wait_for, "vagent is up", 120)
        nats_pid = _nats_server_pid(port)
        ws = await websockets.connect(ws_url)
        sid = json.loads(await ws.recv())["session_id"]
        await _until(ws, "session.started")

        # SIGKILL vagent alone (its process group keeps running, as after the OOM killer).
        first.proc.kill()
        first.proc.wait()
        assert await asyncio.to_thread(_gone_within, nats_pid, 10), \
            "the embedded nats-server outlived its SIGKILLed vagent up"
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()

        second = Proc(args)
        await asyncio.to_thread(second.wait_for, "vagent is up", 120)
        tail = await asyncio.to_thread(
            vagent, "tail", f"vagent.session.{sid}.evt.session.ended", "--from-start", "--json",
            "--limit", "1", "--nats", f"nats://127.0.0.1:{port}")
        assert json.loads(tail.stdout)["reason"] == "edge_lost", tail.stdout + tail.stderr

        async with websockets.connect(f"{ws_url}?session_id={sid}") as again:
            assert json.loads(await again.recv()) == {"type": "session", "session_id": sid,
                                                      "resumed": True}
            assert (await _until(again, "session.started"))["resumed"] is True

        # Ctrl-C in a terminal reaches the whole foreground process group: only vagent is in it,
        # so its children are stopped by vagent, in order, and never reported as crashed.
        os.killpg(second.proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(second.proc.wait, 30) == 0
        output = second.output()
        assert "vagent: stopped" in output and "restarting" not in output, output
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_ctrl_c_stops_vagent_up_and_its_nats_server_in_order_with_no_false_crash(
        tmp_path: Path, llm: OpenAIServer) -> None:
    port, data = free_port(), tmp_path / "data"
    proc = Proc(["up", "--port", str(port), "--data-dir", str(data), "--edge-port", str(free_port()),
                 "--actors", "dialogue"], OPENAI_BASE_URL=llm.base_url)
    try:
        await asyncio.to_thread(proc.wait_for, "vagent is up", 120)
        nats_pid = _nats_server_pid(port)
        said = await asyncio.to_thread(vagent, "say", "hello", "-s", "z" + new_id(), "--nats",
                                       f"nats://127.0.0.1:{port}")
        assert "You said: hello." in said.stdout, said.stdout + said.stderr
        # A terminal's Ctrl-C: SIGINT to the whole foreground process group.
        os.killpg(proc.proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(proc.proc.wait, 30) == 0
        # Stopped by vagent before it exited (a server left to the kernel's parent-death
        # signal would still be stopping, and would keep its pid record).
        assert not _alive(nats_pid), "the nats-server outlived vagent up's Ctrl-C"
        assert not (data / "nats.pid").exists()
        output = proc.output()
        assert "vagent: stopped" in output, output
        assert "restarting" not in output and "ERROR" not in output, output
    finally:
        proc.stop()


class _Sleeper(ChildProcess):
    label = "sleep"
    check_every = 0.05

    def __init__(self, log_file: Path) -> None:
        super().__init__()
        self.log_file = log_file
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        time.sleep(self.start_takes)  # a server loading before it is ready
        self.proc = spawn(["sleep", "60"])

    start_takes = 0.0


async def test_a_child_that_exits_while_vagent_stops_is_not_restarted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vagent.child")
    child = _Sleeper(tmp_path / "sleep.log")
    child.start()
    shutting_down = asyncio.Event()
    supervisor = asyncio.create_task(child.supervise(shutting_down))
    try:
        assert child.proc is not None
        child.proc.kill()  # a crash while running: started again
        async with asyncio.timeout(10):
            while child.starts < 2 or not child.running():
                await asyncio.sleep(0.02)
        assert "sleep exited (-9); restarting" in caplog.text
        caplog.clear()
        # On the way out (a service manager signals the whole group): exits, stays down.
        shutting_down.set()
        assert child.proc is not None
        child.proc.kill()
        async with asyncio.timeout(10):
            await supervisor
        assert child.starts == 2 and not child.running()
        assert "restarting" not in caplog.text and "not restarted" in caplog.text
    finally:
        supervisor.cancel()
        child.stop()


async def test_a_stop_during_a_restart_stops_the_child_that_restart_started(tmp_path: Path) -> None:
    child = _Sleeper(tmp_path / "sleep.log")
    child.start()
    supervisor = asyncio.create_task(child.supervise())
    try:
        assert child.proc is not None
        crashed = child.proc
        child.start_takes = 0.5
        crashed.kill()
        async with asyncio.timeout(10):
            while child.starts < 2:  # the restart is under way, its child not spawned yet
                await asyncio.sleep(0.01)
        # vagent's way out: the supervisor is cancelled, then the child stopped.
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        assert child.proc is not None and child.proc is not crashed  # the restart finished
        restarted = child.proc
        await asyncio.to_thread(child.stop)
        assert restarted.poll() is not None
    finally:
        supervisor.cancel()
        child.stop()


_STALE = """
import os, sys
from pathlib import Path
import bus.child
bus.child.die_with_parent = lambda: None  # a kernel where PR_SET_PDEATHSIG did not fire
from bus.server import EmbeddedServer
EmbeddedServer(Path(sys.argv[1]), port=int(sys.argv[2])).start()
os._exit(0)  # dies like a killed vagent: its nats-server lives on, orphaned
"""


def test_a_stale_nats_server_of_the_data_dir_is_recognised_and_replaced(tmp_path: Path) -> None:
    store, port = tmp_path / "nats", free_port()
    subprocess.run([sys.executable, "-c", _STALE, str(store), str(port)], cwd=ROOT, check=True,
                   timeout=60)
    stale = json.loads((tmp_path / "nats.pid").read_text())["pid"]
    assert _alive(stale) and port_open("127.0.0.1", port)

    server = EmbeddedServer(store, port=port)
    server.start()
    try:
        assert not _alive(stale)
        assert server.running() and server.proc is not None and server.proc.pid != stale
        # A server whose vagent still runs is never taken: two stacks would share one store.
        with pytest.raises(BusError, match="is in use"):
            EmbeddedServer(store, port=free_port()).start()
        assert server.running()
    finally:
        server.stop()
    assert not (tmp_path / "nats.pid").exists()


def test_a_port_held_by_another_program_is_left_alone(tmp_path: Path) -> None:
    port = free_port()
    other = subprocess.Popen([sys.executable, "-c", f"""
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen(); print("ok", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and select.select([other.stdout], [], [], 10)[0]
        other.stdout.readline()
        with pytest.raises(BusError, match=f"port {port} is taken"):
            EmbeddedServer(tmp_path / "nats", port=port).start()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


async def _lease(bus: Bus, started: SessionStarted, edge: str) -> int:
    await bus.publish(started)
    lease = Lease(session_id=started.session_id, edge=edge, started=started.id, ts=time.time_ns())
    return await kv.put(bus, LEASES, lease_key(started.session_id), msgspec.json.encode(lease))


async def test_a_session_whose_edge_died_is_ended_and_resumed_over_ws(api: Api) -> None:
    bus = api.services.bus
    url = api.edge.url.replace("http://", "ws://") + "/ws"
    # Held by an edge that no longer beats.
    lost = SessionStarted(session_id=new_id(), transport="ws")
    await _lease(bus, lost, edge=new_id())
    async with websockets.connect(f"{url}?session_id={lost.session_id}") as ws:
        assert json.loads(await ws.recv())["resumed"] is True
        await _until(ws, "session.started")
    entries, _ = await load(bus, "session", lost.session_id)
    types = [(e.event.type, getattr(e.event, "reason", None)) for e in entries if e.event]
    assert types[:3] == [("session.started", None), ("session.ended", "edge_lost"),
                         ("session.started", None)]
    # Started before leases existed: no edge holds it, so none will end it but this one.
    unleased = SessionStarted(session_id=new_id(), transport="xiaozhi")
    await bus.publish(unleased)
    async with websockets.connect(f"{url}?session_id={unleased.session_id}") as ws:
        assert json.loads(await ws.recv())["resumed"] is True
    # Held by an edge that is alive: connected elsewhere, as before.
    live_edge = new_id()
    await kv.put(bus, EDGES, live_edge, msgspec.json.encode(EdgeBeat(
        edge=live_edge, address="elsewhere:1", hostname="h", pid=1, started_ts=0, ts=time.time_ns())))
    held = SessionStarted(session_id=new_id(), transport="ws")
    await _lease(bus, held, edge=live_edge)
    # `vagent say` sessions have no connection: never ended for want of a lease.
    said = SessionStarted(session_id=new_id(), transport="nats")
    await bus.publish(said)
    for session in (held, said):
        async with websockets.connect(f"{url}?session_id={session.session_id}") as ws:
            assert json.loads(await ws.recv())["code"] == "session_active"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
        assert await last_event(bus, "session", session.session_id, "session.ended") is None


async def test_the_sweep_ends_sessions_of_an_edge_missing_twice_and_of_the_previous_edge(
        tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats", port=free_port())  # no other edge sweeps here
    server.start()
    bus = await Bus.connect(server.url)
    try:
        await bus.declare()
        dead = SessionStarted(session_id=new_id(), transport="ws")
        await _lease(bus, dead, edge=new_id())
        # A lease taken whose session.started was never stored: dropped, nothing recorded.
        unstarted = Lease(session_id=new_id(), edge=new_id(), started=new_id(), ts=time.time_ns())
        await kv.put(bus, LEASES, lease_key(unstarted.session_id), msgspec.json.encode(unstarted))
        sweeper = SessionLeases(bus, tmp_path / "data")
        assert await sweeper.sweep() == 0  # one missed heartbeat may be NATS restarting
        assert await sweeper.sweep() == 1
        ended = await last_event(bus, "session", dead.session_id, "session.ended")
        assert isinstance(ended, SessionEnded) and ended.reason == "edge_lost"
        assert await last_event(bus, "session", unstarted.session_id, "session.ended") is None
        assert await kv.entries(bus, LEASES) == {}

        # An edge restarted at the same address ends its previous life's sessions at once.
        before = SessionLeases(bus, tmp_path / "data")
        await before.start("127.0.0.1", 9)
        left = SessionStarted(session_id=new_id(), transport="ws")
        await before.hold(left)
        await bus.publish(left)
        assert before._task is not None
        before._task.cancel()  # killed: no stop(), its heartbeat still fresh
        with contextlib.suppress(asyncio.CancelledError):
            await before._task
        after = SessionLeases(bus, tmp_path / "data")
        await after.start("127.0.0.1", 9)
        try:
            ended = await last_event(bus, "session", left.session_id, "session.ended")
            assert isinstance(ended, SessionEnded) and ended.reason == "edge_lost"
        finally:
            await after.stop()
    finally:
        await bus.close()
        server.stop()
