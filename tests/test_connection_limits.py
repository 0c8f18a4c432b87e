"""Idle and slow connections: a connection that sends nothing, or trickles its request
head (slowloris), is closed after `edge.header_timeout`, one that trickles its body after
`edge.body_timeout`; every open socket counts against
`edge.max_connections`; a WebSocket whose client never speaks is closed with 4408."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from bus.log import load
from bus.server import EmbeddedServer
from edge.guard import FIRST_MESSAGE_TIMEOUT
from settings.config import Config
from tests.api_harness import Api, api_config, serve_api


def edge_config(**edge: Any) -> Config:
    config = api_config()
    config.edge = msgspec.structs.replace(config.edge, **edge)
    return config


@contextlib.asynccontextmanager
async def edge(nats: EmbeddedServer, tmp_path: Path, config: Config) -> AsyncIterator[Api]:
    data = tmp_path / f"edge{time.monotonic_ns()}"
    data.mkdir()
    async with serve_api(nats.url, data, config) as api:
        yield api


async def raw(api: Api) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(api.edge.host, api.edge.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it did not)."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def stays_open(api: Api, seconds: float) -> None:
    """A `/ws` client that speaks at once is still connected `seconds` later."""
    async with websockets.connect(api.edge.ws_url + "/ws") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "abort"}))
        await asyncio.sleep(seconds)
        await ws.send(json.dumps({"type": "abort"}))
        await ws.ping()


# --- idle and slow connections ----------------------------------------------------------------

async def test_idle_connections_are_closed_and_do_not_block_a_client(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    async with edge(module_nats, tmp_path, edge_config(header_timeout=1.5)) as api:
        idle = [await raw(api) for _ in range(100)]
        started = time.monotonic()
        # A normal client meanwhile: a request, and a WebSocket session.
        r = await api.client.get("/healthz")
        assert r.status_code == 200
        async with websockets.connect(api.edge.ws_url + "/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "session"
        sent = await asyncio.gather(*(closed_within(reader, 10) for reader, _ in idle))
        assert sent == [b""] * 100  # closed without a word: they asked nothing
        assert time.monotonic() - started < 10
        for _, writer in idle:
            writer.close()


async def test_a_slowloris_is_closed_with_408(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    async with edge(module_nats, tmp_path, edge_config(header_timeout=1.0)) as api:

        async def trickle(writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                for n in range(100):  # a header line every 0.2 s: never a whole request
                    writer.write(f"X-Slow-{n}: y\r\n".encode())
                    await writer.drain()
                    await asyncio.sleep(0.2)

        # On a fresh connection …
        reader, writer = await raw(api)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        task = asyncio.create_task(trickle(writer))
        answer = await closed_within(reader, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 3
        task.cancel()
        writer.close()

        # … and on a kept-alive one, after a first request answered in time.
        reader, writer = await raw(api)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        task = asyncio.create_task(trickle(writer))
        answer = await closed_within(reader, 5)
        assert b"HTTP/1.1 408" in answer, answer
        task.cancel()
        writer.close()


async def test_a_body_trickled_slowly_is_closed_with_408(module_nats: EmbeddedServer,
                                                         tmp_path: Path) -> None:
    async with edge(module_nats, tmp_path, edge_config(body_timeout=1.0, max_body_bytes=1000)) as api:

        async def trickle(writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):  # a byte every 0.2 s: the body never ends in time
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.2)

        # The head in time, then the body a byte at a time.
        reader, writer = await raw(api)
        writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
        started = time.monotonic()
        task = asyncio.create_task(trickle(writer))
        answer = await closed_within(reader, 5)
        assert time.monotonic() - started < 3
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert json.loads(body)["error"]["code"] == "body_timeout"
        task.cancel()
        writer.close()

        # Answered early (too large), the rest of the body must still end in time.
        reader, writer = await raw(api)
        writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n")
        first = await reader.readuntil(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 413"), first
        started = time.monotonic()
        task = asyncio.create_task(trickle(writer))
        await closed_within(reader, 5)
        assert time.monotonic() - started < 3
        task.cancel()
        writer.close()

        # A body sent at once is unaffected.
        r = await api.client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x"})
        assert r.status_code == 401, r.text
        # A WebSocket (its upgrade request had no body to wait for) outlives the body timeout.
        await stays_open(api, 1.5)


async def test_a_client_gone_mid_body_is_no_server_error(module_nats: EmbeddedServer, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A slow body given up (the client closes) is the client's doing: no `request failed`
    ERROR line per attempt, which a flood of them would turn into a log flood."""
    async with edge(module_nats, tmp_path, edge_config(body_timeout=30.0)) as api:
        for path in ("/api/v1/auth/login", "/xiaozhi/ota/"):
            _, writer = await raw(api)
            writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 500\r\n\r\n{".encode())
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()
        await asyncio.sleep(0.5)
        r = await api.client.get("/healthz")
        assert r.status_code == 200
    failed = [r for r in caplog.records if r.levelname == "ERROR"]
    assert not failed, [r.getMessage() for r in failed]


async def test_idle_sockets_count_against_max_connections(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = edge_config(max_connections=5, header_timeout=2.0)
    async with edge(module_nats, tmp_path, config) as api:
        idle = [await raw(api) for _ in range(5)]
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=api.edge.url) as fresh:
            r = await fresh.get("/healthz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections", r.text
        assert r.headers["retry-after"] == "1"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(api.edge.ws_url + "/ws"):
                pass
        assert refused.value.response.status_code == 503
        # Once the header timeout has closed them, there is room again.
        await asyncio.gather(*(closed_within(reader, 6) for reader, _ in idle))
        async with httpx.AsyncClient(base_url=api.edge.url) as fresh:
            assert (await fresh.get("/healthz")).status_code == 200
        for _, writer in idle:
            writer.close()


async def test_a_websocket_that_sends_nothing_is_closed_with_4408(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    async with edge(module_nats, tmp_path, edge_config(first_message_timeout=1.0)) as api:
        async with websockets.connect(api.edge.ws_url + "/ws") as ws:
            session = json.loads(await ws.recv())
            assert session["type"] == "session"
            started = time.monotonic()
            messages = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        messages.append(json.loads(await ws.recv()))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == FIRST_MESSAGE_TIMEOUT
            assert time.monotonic() - started < 3
            assert messages[-1]["type"] == "error" and messages[-1]["code"] == "first_message_timeout"
        # The session it opened is recorded as ended.
        await asyncio.sleep(0.3)
        entries, _ = await load(api.services.bus, "session", session["session_id"])
        assert entries[-1].event is not None and entries[-1].event.type == "session.ended"

        # A client that speaks in time stays past the timeout.
        await stays_open(api, 1.5)
