"""A xiaozhi device for the tests, speaking the protocol byte for byte as the ESP32
firmware does (DESIGN §5), written apart from the edge's own code so that the two do not
share a mistake.

- Handshake headers (or query parameters, as browsers do), hello, and the server's hello.
- Uplink Opus frames in v1 (raw), v2 (16-byte header) or v3 (4-byte header) framing.
- Everything the server sends, in arrival order: JSON messages and downlink audio frames
  (unwrapped by the same version's framing, with their v2 timestamps).
- An MCP server, as the firmware is one: it answers `initialize`, `tools/list` (paged
  with `cursor` / `nextCursor`) and `tools/call` for the tools it was given.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

Tool = Callable[[dict[str, Any]], str]


@dataclass
class Received:
    at: float  # monotonic
    kind: str  # "json" | "audio"
    message: dict[str, Any] = field(default_factory=dict)
    audio: bytes = b""
    timestamp: int = 0  # v2 downlink frames


def frame_up(version: int, payload: bytes, timestamp: int = 0, kind: int = 0) -> bytes:
    """An uplink frame exactly as the firmware builds it (network byte order)."""
    if version == 2:
        return struct.pack(">HHIII", 2, kind, 0, timestamp, len(payload)) + payload
    if version == 3:
        return struct.pack(">BBH", kind, 0, len(payload)) + payload
    return payload


def frame_down(version: int, data: bytes) -> tuple[bytes, int]:
    """A downlink frame's Opus payload and timestamp, checking the header as we go."""
    if version == 2:
        proto, kind, reserved, timestamp, size = struct.unpack(">HHIII", data[:16])
        assert (proto, kind, reserved) == (2, 0, 0), (proto, kind, reserved)
        assert size == len(data) - 16
        return data[16:], timestamp
    if version == 3:
        kind, reserved, size = struct.unpack(">BBH", data[:4])
        assert (kind, reserved) == (0, 0) and size == len(data) - 4
        return data[4:], 0
    return data, 0


class XiaozhiDevice:
    def __init__(self, url: str, *, version: int = 1, device_id: str = "AA:BB:CC:DD:EE:01",
                 client_id: str = "9f8e7d6c-0000-4000-8000-000000000001", token: str | None = None,
                 via_query: bool = False, send_version: bool = True,
                 tools: dict[str, tuple[str, Tool]] | None = None, page_size: int = 1) -> None:
        self.url = url
        self.version = version
        self.device_id = device_id
        self.client_id = client_id
        self.token = token
        self.via_query = via_query
        self.send_version = send_version
        self.tools = tools or {}  # name → (description, handler)
        self.page_size = page_size
        self.ws: ClientConnection | None = None
        self.received: list[Received] = []
        self.mcp_log: list[dict[str, Any]] = []  # the server's MCP requests
        self.session_id = ""
        self.server_hello: dict[str, Any] = {}
        self.closed = False
        self.close_code: int | None = None  # the server's close frame, once closed
        self._new = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._ts = 0

    # --- connection ---------------------------------------------------------------------

    async def connect(self) -> XiaozhiDevice:
        headers: dict[str, str] = {}
        url = self.url
        if self.via_query:
            query = [f"device-id={self.device_id}", f"client-id={self.client_id}"]
            if self.token:
                query.append(f"authorization=Bearer%20{self.token}")
            if self.send_version:
                query.append(f"protocol-version={self.version}")
            url += "?" + "&".join(query)
        else:
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            if self.send_version:
                headers["Protocol-Version"] = str(self.version)
            headers["Device-Id"] = self.device_id
            headers["Client-Id"] = self.client_id
        self.ws = await websockets.connect(url, additional_headers=headers, max_size=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def hello(self, *, mcp: bool = False, sample_rate: int = 16000, frame_duration: int = 60,
                    downlink: dict[str, Any] | None = None, aec: bool | None = None,
                    timeout: float = 10) -> dict[str, Any]:
        features: dict[str, bool] = {"mcp": mcp} if aec is None else {"mcp": mcp, "aec": aec}
        message: dict[str, Any] = {
            "type": "hello", "version": self.version, "features": features,
            "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": sample_rate, "channels": 1,
                             "frame_duration": frame_duration}}
        if downlink:
            message["downlink_audio_params"] = downlink
        await self.send(message)
        self.server_hello = (await self.wait_json("hello", timeout=timeout)).message
        self.session_id = self.server_hello["session_id"]
        return self.server_hello

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)

    async def __aenter__(self) -> XiaozhiDevice:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- device → server ----------------------------------------------------------------

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        assert self.ws is not None
        if isinstance(message, dict):
            if self.session_id and "session_id" not in message and message["type"] != "hello":
                message = {"session_id": self.session_id, **message}
            message = json.dumps(message, ensure_ascii=False)
        await self.ws.send(message)

    async def listen(self, state: str, mode: str = "auto", text: str | None = None) -> None:
        message: dict[str, Any] = {"type": "listen", "state": state}
        if state == "start":
            message["mode"] = mode
        if text is not None:
            message["text"] = text
        await self.send(message)

    async def abort(self, reason: str | None = None) -> None:
        await self.send({"type": "abort", **({"reason": reason} if reason else {})})

    async def send_audio(self, packets: list[bytes], frame_ms: int = 60, realtime: bool = True,
                         speed: float = 1.0) -> float:
        """Stream Opus packets as the firmware does (paced at real time / `speed`); the
        monotonic time the last one was sent."""
        assert self.ws is not None
        start = time.monotonic()
        for i, packet in enumerate(packets):
            if realtime:
                delay = start + i * frame_ms / 1000 / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.ws.send(frame_up(self.version, packet, self._ts))
            self._ts += frame_ms
        return time.monotonic()

    # --- server → device ----------------------------------------------------------------

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                now = time.monotonic()
                if isinstance(data, bytes):
                    payload, ts = frame_down(self.version, data)
                    self.received.append(Received(now, "audio", audio=payload, timestamp=ts))
                else:
                    message = json.loads(data)
                    self.received.append(Received(now, "json", message=message))
                    if message.get("type") == "mcp":
                        await self._mcp(message["payload"])
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            self.closed = True
            self._new.set()

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r.message for r in self.received
                if r.kind == "json" and (kind is None or r.message.get("type") == kind)]

    def audio(self) -> list[Received]:
        return [r for r in self.received if r.kind == "audio"]

    async def wait_for(self, match: Callable[[Received], bool], timeout: float = 30,
                       start: int = 0) -> Received:
        """The first item from index `start` on that matches (waiting for it)."""
        async with asyncio.timeout(timeout):
            seen = start
            while True:
                for item in self.received[seen:]:
                    if match(item):
                        return item
                seen = len(self.received)
                if self.closed:
                    raise ConnectionError(f"closed ({self.close_code}) while waiting; got "
                                          f"{[r.message for r in self.received if r.kind == 'json']}")
                self._new.clear()
                await self._new.wait()

    async def wait_json(self, kind: str, timeout: float = 30, start: int = 0,
                        **fields: Any) -> Received:
        return await self.wait_for(
            lambda r: r.kind == "json" and r.message.get("type") == kind
            and all(r.message.get(k) == v for k, v in fields.items()), timeout, start)

    async def wait_closed(self, timeout: float = 10) -> int | None:
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    # --- the device's MCP server --------------------------------------------------------

    async def _mcp(self, payload: dict[str, Any]) -> None:
        self.mcp_log.append(payload)
        method, rid = payload.get("method", ""), payload.get("id")
        assert payload.get("jsonrpc") == "2.0"
        if method.startswith("notifications/"):
            return
        assert isinstance(rid, int), "the firmware only answers requests with a numeric id"
        params = payload.get("params") or {}
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                "serverInfo": {"name": "test-device", "version": "1.0.0"}}
        elif method == "tools/list":
            names = sorted(self.tools)
            start = names.index(params["cursor"]) if params.get("cursor") else 0
            page = names[start:start + self.page_size]
            result = {"tools": [{"name": n, "description": self.tools[n][0],
                                 "inputSchema": {"type": "object", "properties": {}}}
                                for n in page]}
            if start + self.page_size < len(names):
                result["nextCursor"] = names[start + self.page_size]
        elif method == "tools/call":
            name = params["name"]
            if name not in self.tools:
                await self._answer({"jsonrpc": "2.0", "id": rid,
                                    "error": {"code": -32601, "message": f"Unknown tool: {name}"}})
                return
            text = self.tools[name][1](params.get("arguments") or {})
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        else:
            await self._answer({"jsonrpc": "2.0", "id": rid,
                                "error": {"code": -32601, "message": f"Method not implemented: {method}"}})
            return
        await self._answer({"jsonrpc": "2.0", "id": rid, "result": result})

    async def _answer(self, payload: dict[str, Any]) -> None:
        await self.send({"type": "mcp", "payload": payload})
