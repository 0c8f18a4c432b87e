"""A real-time WebSocket connection with the edge's limits: admission (max connections, and
per client address until `release`), frame size, message rate, serialized sends, refusals
with a reason and a close code, and being told to go when the edge shuts down.

A refusal that says `retry_after` (a session over its turn limit) stops the reading for that
long: uvicorn reads nothing from a socket while its app has a message unread, so a flood
fills the client's own buffers and its sends stall, instead of each excess message being
read, parsed and answered here. A client told to wait IGNORED_WAITS times in a short while
is closed: what it sent meanwhile is not read later, after it may have gone. Refused messages
spend an error budget (`edge.max_errors_per_second`) the same way: beyond it, reading waits
until the budget allows one more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edge.api.endpoint import client_ip
from edge.errors import ApiError
from edge.jsonparse import MESSAGE_CODES, JsonInputError
from edge.realtime.limits import (
    GOING_AWAY,
    IGNORED_WAIT_SECONDS,
    IGNORED_WAITS,
    POLICY,
    TOO_BIG,
    TRY_LATER,
    MessageRate,
    RefusalLog,
    TurnLimit,
    busy,
    refusal,
)
from edge.realtime.session import LinkRegistry, SessionLink
from edge.services import Services
from schemas import SessionRefused
from telemetry import metrics

log = logging.getLogger("vagent.edge.connection")


async def serve(websocket: WebSocket, handler: Callable[[Connection], Awaitable[None]],
                transport: str) -> None:
    """Admit the connection, run `handler` on it, and give its address's slot back however
    it ends: every real-time endpoint's frame."""
    conn = Connection(websocket)
    if not await conn.admit():
        return
    metrics.connection_opened(transport)
    try:
        await handler(conn)
    finally:
        conn.release()
        metrics.connection_closed(transport)


class Connection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.services: Services = websocket.app.state.services
        self.registry: LinkRegistry = self.services.links
        edge = self.services.config.edge
        self.max_frame = edge.max_frame_bytes
        self.rate = MessageRate(edge.max_messages_per_second)
        self.errors = MessageRate(edge.max_errors_per_second)
        self.end_reason: str | None = None
        self.path = websocket.url.path
        self.session_id: str | None = None  # once attached, for the log
        self.address: str | None = None  # the client address whose slot it holds, once admitted
        self._send = asyncio.Lock()
        self._closed = asyncio.Event()  # closed by this side: a paused read ends
        self._paused_until = 0.0  # monotonic: no reading before then
        self._told_to_wait: list[float] = []  # monotonic: when, within IGNORED_WAIT_SECONDS
        self._refusals = RefusalLog(log)

    async def admit(self, subprotocol: str | None = None) -> bool:
        await self.websocket.accept(subprotocol=subprotocol)
        if self.services.draining:
            await self.close(GOING_AWAY, "the server is shutting down")
            return False
        if len(self.registry) >= self.services.config.edge.max_connections:
            await self.send_error("too_many_connections", "this edge is full: retry later")
            await self.close(TRY_LATER, "too many connections")
            return False
        address = client_ip(self.websocket, self.services)
        limit = self.services.config.edge.max_sessions_per_address
        if not self.services.addresses.take(address, limit):
            self.end_reason = "too_many_sessions"
            await self.send_error("too_many_sessions",
                                  f"at most {limit} sessions at once from one address: end one first",
                                  {"limit": limit})
            await self.close(TRY_LATER, "too many sessions from this address")
            return False
        self.address = address
        return True

    def turn_limit(self) -> TurnLimit:
        """A session's turn limit on this connection, taking from its address's bucket too."""
        return TurnLimit(self.services.config.edge, self.services.turns.bucket(self.address or ""))

    def release(self) -> None:
        """Give the client address's slot back: the connection has ended (call once it has)."""
        self._refusals.flush()
        if self.address is not None:
            self.services.addresses.give(self.address)
            self.address = None

    def attach(self, link: SessionLink) -> None:
        self.session_id = link.session_id
        async def go(reason: str) -> None:
            self.end_reason = reason
            await self.send_json({"type": "goodbye", "reason": reason})
            await self.close(GOING_AWAY, reason)

        self.registry.on_close(link, go)

    async def receive(self, may_exceed: Callable[[str | bytes], bool] | None = None
                      ) -> str | bytes | None:
        """The next message within the limits; None once the client is gone or was closed.
        `may_exceed`: which messages over the frame limit the endpoint reads all the same
        (it bounds them itself)."""
        if self.websocket.client_state != WebSocketState.CONNECTED:
            return None
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._closed.wait()
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        data: str | bytes | None = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        if len(data) > self.max_frame and not (may_exceed and may_exceed(data)):
            self.end_reason = "frame_too_large"
            await self.send_error("frame_too_large", f"messages are limited to {self.max_frame} bytes")
            await self.close(TOO_BIG, "frame too large")
            return None
        if not self.rate.allow():
            self.end_reason = "rate_limited"
            await self.send_error("rate_limited", "too many messages: slow down")
            await self.close(POLICY, "message rate exceeded")
            return None
        return data

    async def send_json(self, value: dict[str, Any]) -> None:
        await self.send_bytes_text(json.dumps(value, ensure_ascii=False).encode())

    async def send_bytes_text(self, data: bytes) -> None:
        await self._deliver({"type": "websocket.send", "text": data.decode()})

    async def send_audio(self, data: bytes) -> None:
        await self._deliver({"type": "websocket.send", "bytes": data})

    async def send_error(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Tell the client why something it sent was refused; the session goes on. The log
        says the same (RefusalLog: a line per interval, not per message), so the reason is
        known without a traceback."""
        self._refusals.refused(code, message, {"path": self.path, "session": self.session_id})
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if details:
            error["details"] = details
        await self.send_json(error)

    async def reject(self, error: ApiError | JsonInputError) -> None:
        """`send_error` for a refused message, whether the JSON or what it says is wrong."""
        if isinstance(error, JsonInputError):
            error = error.api_error(MESSAGE_CODES)
        await self.send_error(error.code, error.message, error.details)
        debt = self.errors.owe()
        if debt > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + debt)
        retry_after = error.details.get("retry_after")
        if error.status == 429 and isinstance(retry_after, (int, float)):
            now = time.monotonic()
            self._told_to_wait = [t for t in self._told_to_wait if now - t < IGNORED_WAIT_SECONDS]
            self._told_to_wait.append(now)
            if len(self._told_to_wait) >= IGNORED_WAITS:
                self.end_reason = error.code
                self._log("connection closed", error.code,
                          f"told to wait {IGNORED_WAITS} times in {IGNORED_WAIT_SECONDS:g} s",
                          close_code=POLICY)
                await self.close(POLICY, error.code)
                return
            self._paused_until = now + retry_after

    async def refuse(self, error: ApiError) -> None:
        """Tell why (the REST API's error shape), then close with 4000 + its status."""
        self.end_reason = error.code
        code = refusal(error.status)
        self._log("connection refused", error.code, error.message, close_code=code)
        await self.send_json({"type": "error", "code": error.code, "message": error.message,
                              "details": error.details})
        await self.close(code, error.code)

    async def refused(self, event: SessionRefused) -> None:
        """The session was refused for want of capacity: say so (`busy`, with `retry_after`
        in its details), then close with 1013 (try again later)."""
        error = busy(event)
        self.end_reason = error.code
        await self.send_error(error.code, error.message, error.details)
        await self.close(TRY_LATER, error.code)

    def _log(self, what: str, code: str, reason: str, **more: Any) -> None:
        log.info(what, extra={"path": self.path, "session": self.session_id, "code": code,
                              "reason": reason, **more})

    async def close(self, code: int, reason: str = "") -> None:
        self._closed.set()
        async with self._send:
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code, reason[:120])

    async def finish(self, link: SessionLink, reason: str) -> None:
        await link.close(reason)
        await self.close(1000, reason)

    async def _deliver(self, message: dict[str, Any]) -> None:
        async with self._send:
            if self.websocket.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.websocket.send(message)
            except Exception:  # the client went away: the receive loop will notice
                log.debug("send to a closed connection dropped")
