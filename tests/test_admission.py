"""A full ASR worker on a real NATS, behind the real edge: a new session waits in a visible
queue (`session.queued`), is admitted when a place frees (`session.admitted`), and past
`[asr] max_queue_ms` is refused (`session.refused`): its `/ws` client is told `busy` and
closed, and the session ends with that reason."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import websockets
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY

from actors.asr.actor import Asr
from actors.asr.settings import LOCAL_SESSIONS_PER_CORE, capacity
from actors.runtime import ActorHost
from bus.client import Bus
from bus.server import EmbeddedServer
from schemas import SessionAdmitted, SessionEnded, SessionQueued, SessionRefused
from tests.api_harness import Api, api_config, serve_api
from tests.conftest import wait_for
from tests.procs import vagent
from tests.test_tracing import spans
from tests.test_webrtc import Browser
from tests.test_ws import until, ws_url
from tests.test_xiaozhi import mac
from tests.test_xiaozhi import url as xiaozhi_url
from tests.xiaozhi_client import XiaozhiDevice

MAX_QUEUE_MS = 5000
__all__ = ["spans"]  # a fixture


def test_a_worker_takes_a_share_of_the_cores_with_local_models_and_no_limit_with_servers() -> None:
    cores = len(os.sched_getaffinity(0))
    assert capacity(0, "moonshine") == capacity(0, "whisper") == LOCAL_SESSIONS_PER_CORE * cores
    assert capacity(0, "deepgram") is None and capacity(0, "openai") is None
    assert capacity(-1, "moonshine") is None
    assert capacity(3, "deepgram") == 3


@pytest.fixture
async def full_edge(module_nats: EmbeddedServer, tmp_path: Path) -> AsyncIterator[tuple[Api, Asr, Bus]]:
    """The edge and one ASR worker that hears one session at once."""
    config = api_config()
    config.asr = msgspec.structs.replace(config.asr, max_sessions=1, max_queue_ms=MAX_QUEUE_MS)
    bus = await Bus.connect(module_nats.url, name="test-admission")
    await bus.declare()
    host = ActorHost(bus, [Asr], config)
    await host.start()
    asr = host.actors[0]
    assert isinstance(asr, Asr)
    try:
        async with serve_api(module_nats.url, tmp_path, config) as api:
            yield api, asr, bus
    finally:
        await host.stop()
        await bus.close()


async def claimed(asr: Asr, session_id: str) -> None:
    async with asyncio.timeout(10):
        while session_id not in asr.sessions:
            await asyncio.sleep(0.02)


def waits(outcome: str) -> float:
    return REGISTRY.get_sample_value("vagent_session_queue_seconds_count", {"outcome": outcome}) or 0.0


async def test_a_full_worker_queues_admits_when_a_place_frees_and_refuses_past_the_limit(
        full_edge: tuple[Api, Asr, Bus]) -> None:
    api, asr, bus = full_edge
    admitted_before, refused_before = waits("admitted"), waits("refused")
    async with websockets.connect(ws_url(api)) as ws1:
        first = json.loads(await ws1.recv())["session_id"]
        await claimed(asr, first)
        async with websockets.connect(ws_url(api)) as ws2:
            second = json.loads(await ws2.recv())["session_id"]
            queued = (await until(ws2, "session.queued"))[-1]
            assert (queued["position"], queued["max_wait_ms"]) == (1, MAX_QUEUE_MS)
            assert second not in asr.sessions
            await ws1.close()  # the first session ends: its place goes to the waiting one
            admitted = (await until(ws2, "session.admitted"))[-1]
            assert admitted["queued_ms"] > 0
            await claimed(asr, second)

            async with websockets.connect(ws_url(api)) as ws3:
                third = json.loads(await ws3.recv())["session_id"]
                seen = await until(ws3, "error", timeout=MAX_QUEUE_MS / 1000 + 20)
                kinds = [m["type"] for m in seen]
                assert kinds.index("session.queued") < kinds.index("session.refused")
                refused = seen[kinds.index("session.refused")]
                assert refused["reason"] == "busy" and refused["queued_ms"] >= MAX_QUEUE_MS
                error = seen[-1]
                assert error["code"] == "busy" and "try again" in error["message"]
                assert error["details"]["retry_after"] == refused["retry_after_s"] == 5
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws3.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert second in asr.sessions  # the admitted session is heard on

    def ended(events: list) -> bool:
        return any(isinstance(e, SessionEnded) for e in events)

    log = await wait_for(bus, third, ended)
    assert [e.reason for e in log if isinstance(e, SessionEnded)] == ["busy"]
    assert [type(e) for e in log if isinstance(e, SessionQueued | SessionRefused)] == [
        SessionQueued, SessionRefused]
    assert not any(isinstance(e, SessionQueued | SessionAdmitted)
                   for e in await wait_for(bus, first, ended))
    log = await wait_for(bus, second, ended)
    assert [type(e) for e in log if isinstance(e, SessionQueued | SessionAdmitted)] == [
        SessionQueued, SessionAdmitted]
    assert (waits("admitted") - admitted_before, waits("refused") - refused_before) == (1, 1)


async def test_a_refused_xiaozhi_device_gets_an_alert_then_the_close(
        full_edge: tuple[Api, Asr, Bus]) -> None:
    api, asr, bus = full_edge
    async with websockets.connect(ws_url(api)) as ws:
        await claimed(asr, json.loads(await ws.recv())["session_id"])
        async with XiaozhiDevice(xiaozhi_url(api), version=3, device_id=mac()) as device:
            await device.hello()
            alert = (await device.wait_json("alert", timeout=MAX_QUEUE_MS / 1000 + 20)).message
            assert alert["status"] == "error" and "busy" in alert["message"]
            assert await device.wait_closed() == 1013
    session_id = device.server_hello["session_id"]
    log = await wait_for(bus, session_id, lambda events: any(isinstance(e, SessionEnded)
                                                             for e in events))
    assert [e.reason for e in log if isinstance(e, SessionEnded)] == ["busy"]


async def test_a_refused_webrtc_peer_gets_the_error_on_its_data_channel_then_goodbye(
        loopback_ice: None, full_edge: tuple[Api, Asr, Bus]) -> None:
    api, asr, bus = full_edge
    async with websockets.connect(ws_url(api)) as ws:
        await claimed(asr, json.loads(await ws.recv())["session_id"])
        browser = Browser(audio=False)
        try:
            session_id = await browser.connect(api)
            error = await browser.until("error", timeout=MAX_QUEUE_MS / 1000 + 20)
            assert error["code"] == "busy" and error["details"]["retry_after"] == 5
            assert (await browser.until("goodbye"))["reason"] == "busy"
            assert [m["type"] for m in browser.seen if m["type"].startswith("session.")][-2:] == [
                "session.queued", "session.refused"]
        finally:
            await browser.close()
    log = await wait_for(bus, session_id, lambda events: any(isinstance(e, SessionEnded)
                                                             for e in events))
    assert [e.reason for e in log if isinstance(e, SessionEnded)] == ["busy"]


@pytest.mark.slow
async def test_bench_edge_counts_admitted_waiting_and_refused_sessions() -> None:
    done = await asyncio.to_thread(vagent, "bench", "edge", "--transport", "ws", "--sessions", "3",
                                   "--max-sessions", "1", "--listen", "1", timeout=240)
    text = done.stdout
    assert done.returncode == 0, (text, done.stderr[-2000:])
    assert "3 concurrent, 1 connections held, 1 answered" in text, text
    assert "1 admitted, 2 waited first, 2 refused busy" in text, text
    assert "error" not in text


async def test_a_session_put_back_is_a_deferred_span_not_a_failed_one(
        spans: InMemorySpanExporter, full_edge: tuple[Api, Asr, Bus]) -> None:
    api, asr, _ = full_edge
    async with websockets.connect(ws_url(api)) as ws1:
        await claimed(asr, json.loads(await ws1.recv())["session_id"])
        async with websockets.connect(ws_url(api)) as ws2:
            await until(ws2, "session.queued")
            await ws1.close()
            await until(ws2, "session.admitted")
    handled = [s for s in spans.get_finished_spans() if s.name == "asr session.started"]
    deferred = [s for s in handled if any(e.name == "deferred" for e in s.events)]
    assert deferred and len(deferred) < len(handled)
    assert all(s.status.status_code != StatusCode.ERROR for s in handled)
