"""Connection limits below the app, where uvicorn leaves gaps.

uvicorn's h11 protocol starts its keep-alive timer only after a response, so a fresh
connection that sends nothing, or trickles one header line at a time (slowloris), stays
open for ever; and `limit_concurrency` looks at the connection count only once a request
has arrived, so idle sockets pile up unseen. `GuardedH11Protocol` closes a connection whose
request headers are not complete within `edge.header_timeout` (from the connect, and from
each response on a kept-alive connection; trickling does not extend it), and counts every
open socket, idle ones included, against `edge.max_connections`: past it, the request is
answered `503 too_many_connections` and the connection closed. Once the head is in, the
whole body must follow within `edge.body_timeout` (from the end of the head; trickling does
not extend it either), or the client is answered `408 body_timeout` and closed: the app's
pending read then ends as a disconnect.

A WebSocket is handed to its own protocol once its upgrade request is complete; from then
`FirstMessageTimeout` (ASGI middleware) closes one whose client sends nothing within
`edge.first_message_timeout` of the accept, with close code 4408 after an error message
in the API's shape, as the real-time endpoints close their refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, ClassVar

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge.api.endpoint import error_response
from edge.errors import ApiError
from settings.config import EdgeSettings

log = logging.getLogger("vagent.edge.guard")
FIRST_MESSAGE_TIMEOUT = 4408  # 4000 + 408 Request Timeout, like xiaozhi's hello_timeout
# Answered to a client that sent part of a request head in time, before closing.
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n")
_BODY_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_FULL = error_response(ApiError(503, "too_many_connections", "this edge is full: retry later",
                                {"retry_after": 1}, {"Retry-After": "1", "Connection": "close"}))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a cap on open connections."""

    edge: ClassVar[EdgeSettings]  # set by `guarded_protocol`; read per connection (tests patch it)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._body_deadline = False  # whether `_deadline` is the body's rather than the head's
        self._over_limit = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's: a socket's Transport, not asyncio's BaseTransport
        super().connection_made(transport)
        # `connections` holds every open socket of this server, HTTP and WebSocket, this one
        # included. Answering (rather than closing at once) lets the client read why.
        if len(self.connections) > self.edge.max_connections:
            self._over_limit = True
            self.app = _FULL
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            self._disarm()  # closed, or handed to the WebSocket protocol: none of ours to time
        elif self.conn.their_state is h11.IDLE:
            # Between requests (a body read after an early response ends here too): the
            # deadline runs from the first byte if none runs yet, and more bytes do not move it.
            if self._deadline is None or self._body_deadline:
                self._arm()
        elif self.conn.their_state is h11.SEND_BODY:
            # The head is in, the body is coming: its own deadline, from the end of the head.
            if self._deadline is None or not self._body_deadline:
                self._arm(body=True)
        else:  # a whole request arrived (or an upgrade, or a parse error): the app's turn
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on a kept-alive connection gets the same deadline as the first.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()
        # An early answer (413, 401 …) to a request whose body is still coming keeps the body
        # deadline: the body is read and dropped before the next request, and must end too.

    def _should_upgrade(self) -> bool:
        # Over the limit, a WebSocket handshake is answered with the 503 as well.
        return not self._over_limit and super()._should_upgrade()

    def _arm(self, *, body: bool = False) -> None:
        self._disarm()
        self._body_deadline = body
        if body:
            self._deadline = self.loop.call_later(self.edge.body_timeout, self._body_expired)
        else:
            self._deadline = self.loop.call_later(self.edge.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _body_expired(self) -> None:
        self._deadline = None
        if (self.transport.is_closing() or self.transport.get_protocol() is not self
                or self.conn.their_state is not h11.SEND_BODY):
            return
        # Unless the app has begun its answer (an early 413 …), the client is told why.
        if self.cycle is None or not self.cycle.response_started:
            timeout = self.edge.body_timeout
            body = json.dumps({"error": {
                "code": "body_timeout",
                "message": f"the request body did not arrive within {timeout:g} s of its headers",
                "details": {"timeout": timeout}}}).encode()
            self.transport.write(_BODY_TIMEOUT % (len(body), body))
        log.info("connection closed: request body not complete in time",
                 extra={"client": self.client, "path": self.scope.get("path")})
        self.transport.close()

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial = bool(self.conn.trailing_data[0])
        if partial:
            self.transport.write(_REQUEST_TIMEOUT)
        log.debug("connection closed: no complete request head in time",
                  extra={"client": self.client, "partial": partial})
        self.transport.close()


def guarded_protocol(edge: EdgeSettings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, bound to these settings."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"edge": edge})


class FirstMessageTimeout:
    """ASGI middleware: a WebSocket client must send its first message within
    `edge.first_message_timeout` of the accept. Otherwise the client is told why (`error
    first_message_timeout`) and closed with 4408; the app's pending receive then gets a
    disconnect, and what the app sends after that is dropped (the socket is closed)."""

    def __init__(self, app: ASGIApp, edge: EdgeSettings) -> None:
        self.app = app
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        timeout = self.edge.first_message_timeout
        deadline: float | None = None  # from the accept: the client cannot send before it
        heard = False
        closed = False

        async def guarded_send(message: Message) -> None:
            nonlocal deadline
            if closed:
                return
            if message["type"] == "websocket.accept" and deadline is None:
                deadline = loop.time() + timeout
            await send(message)

        async def guarded_receive() -> Message:
            nonlocal heard, closed
            if closed:
                return {"type": "websocket.disconnect", "code": FIRST_MESSAGE_TIMEOUT}
            if heard or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    closed = True
                    await _close_silent(send, timeout)
                    return {"type": "websocket.disconnect", "code": FIRST_MESSAGE_TIMEOUT}
            if message["type"] == "websocket.receive":
                heard = True
            return message

        await self.app(scope, guarded_receive, guarded_send)


async def _close_silent(send: Send, timeout: float) -> None:
    error = {"type": "error", "code": "first_message_timeout",
             "message": f"no message within {timeout:g} s of connecting",
             "details": {"timeout": timeout}}
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "websocket.send", "text": json.dumps(error)})
        await send({"type": "websocket.close", "code": FIRST_MESSAGE_TIMEOUT,
                    "reason": "first_message_timeout"})
