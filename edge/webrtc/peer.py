"""One browser's peer connection and its side of the session.

The offer is answered (`negotiate`), then the session opened (`start`): the client is told
its id and the session's events on the data channel labelled `events` once it opens —
everything before that waits in order — and its microphone is published to `audio.in`.
The session ends when the peer connection closes or fails, the client sends `hangup`,
the channel closes, the client never connects (`CONNECT_TIMEOUT`), or the edge shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from edge.errors import ApiError
from edge.realtime.limits import MessageRate
from edge.realtime.session import Caller, SessionLink
from edge.services import Services
from edge.webrtc.audio import DOWNLINK, UPLINK, DownlinkTrack, Uplink
from schemas import Event, to_json

log = logging.getLogger("vagent.edge.webrtc")

CHANNEL = "events"  # the data channel's label
CONNECT_TIMEOUT = 30.0  # seconds from the answer to an open data channel
MAX_BACKLOG = 2000  # messages held for a channel not yet open
GOODBYE_FLUSH = 0.25  # seconds for a goodbye to leave before the connection closes


class Incoming(msgspec.Struct):
    type: str
    text: str | None = None
    mode: str = "auto"


class Peer:
    def __init__(self, services: Services, caller: Caller) -> None:
        self.services = services
        edge = services.config.edge
        self.max_message = edge.max_frame_bytes
        self.rate = MessageRate(edge.max_messages_per_second)
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=url) for url in edge.ice_servers]))
        self.downlink = DownlinkTrack()
        self.link = SessionLink(services.bus, services.links, caller, transport="webrtc",
                                audio_in=UPLINK, audio_out=DOWNLINK, on_event=self._event,
                                on_audio=self._audio)
        self.channel: RTCDataChannel | None = None
        self.remote_audio: MediaStreamTrack | None = None
        self.uplink: Uplink | None = None
        self.end_reason: str | None = None
        self.closed = asyncio.Event()
        self.on_closed: Callable[[Peer], None] | None = None
        self._closing = False
        self._backlog: list[str] = []
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []

    # --- signaling -------------------------------------------------------------------

    async def negotiate(self, sdp: str) -> str:
        """The answer to the client's offer, with every local candidate gathered."""
        kinds = [m.kind for m in SessionDescription.parse(sdp).media]
        if "application" not in kinds:
            raise ApiError(422, "bad_offer", f"the offer has no data channel: create the "
                                             f"{CHANNEL!r} channel before the offer",
                           {"media": kinds})
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc says ValueError mostly, but not always
            raise ApiError(422, "bad_offer", f"the offer was refused: {exc}") from None
        if "audio" in kinds:
            pc.addTrack(self.downlink)
        await pc.setLocalDescription(await pc.createAnswer())  # gathers candidates
        return pc.localDescription.sdp

    async def start(self, session_id: str | None) -> str:
        """Open (or resume) the session; its events queue until the channel opens."""
        sid = await self.link.open(session_id)
        self._backlog.insert(0, json.dumps({"type": "session", "session_id": sid,
                                            "resumed": self.link.resumed}))
        self.services.links.on_close(self.link, self._shutdown)
        await self.link.start()
        self._spawn(self._serve())
        self._spawn(self._watchdog())
        if self.remote_audio is not None:
            self.uplink = Uplink(self.remote_audio, self.link.audio)
            self._spawn(self.uplink.run())
        return sid

    # --- peer connection events ------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.remote_audio is None:
            self.remote_audio = track

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL or self.channel is not None:
            log.debug("data channel %r ignored", channel.label)
            return
        self.channel = channel
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._spawn(self.close("client_closed")))
        backlog, self._backlog = self._backlog, []
        for text in backlog:
            channel.send(text)

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "failed":
            await self.close("connection_failed")
        elif state == "closed":
            await self.close("client_closed")

    # --- session → client ------------------------------------------------------------

    async def _event(self, event: Event) -> None:
        if event.type == "turn.interrupted":
            self.downlink.flush()
        self.send(to_json(event).decode())

    async def _audio(self, data: bytes) -> None:
        self.downlink.push(data)

    def send(self, text: str) -> None:
        channel = self.channel
        if channel is None:
            if not self._closing and len(self._backlog) < MAX_BACKLOG:
                self._backlog.append(text)
            return
        if channel.readyState == "open":
            try:
                channel.send(text)
            except Exception:  # closing under us: the close handler ends the session
                log.debug("send on a closing data channel dropped")

    def send_json(self, value: dict[str, Any]) -> None:
        self.send(json.dumps(value, ensure_ascii=False))

    def send_error(self, code: str, message: str) -> None:
        self.send_json({"type": "error", "code": code, "message": message})

    # --- client → session ------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            message = await self._inbox.get()
            if isinstance(message, bytes):
                self.send_error("bad_message", "send JSON text messages")
                continue
            if len(message.encode()) > self.max_message:
                self.send_error("frame_too_large", f"messages are limited to {self.max_message} bytes")
                await self.close("frame_too_large", goodbye=True)
                return
            if not self.rate.allow():
                self.send_error("rate_limited", "too many messages: slow down")
                await self.close("rate_limited", goodbye=True)
                return
            try:
                if not await self._command(message):
                    return
            except Exception:
                log.exception("a data channel message failed", extra={"session": self.link.session_id})
                self.send_error("internal", "the message could not be handled: retry")

    async def _command(self, raw: str) -> bool:
        """Handle one message; False once the session is over."""
        try:
            command = msgspec.json.decode(raw, type=Incoming)
        except msgspec.DecodeError as exc:
            self.send_error("bad_message", f"not a valid message: {exc}")
            return True
        match command.type:
            case "user.text":
                if not (command.text or "").strip():
                    self.send_error("bad_message", "user.text needs a non-empty text")
                else:
                    await self.link.text(command.text or "")
            case "abort":
                self.downlink.flush()
                await self.link.abort()
            case "hangup":
                await self.close("hangup")
                return False
            case "listen.start":
                if command.mode not in ("auto", "manual", "realtime"):
                    self.send_error("bad_message", "mode must be auto, manual or realtime")
                else:
                    await self.link.listen_start(command.mode)
            case "listen.stop":
                await self.link.listen_stop()
            case other:
                self.send_error("unknown_type", f"unknown message type {other!r}")
        return True

    # --- the end ---------------------------------------------------------------------

    async def _watchdog(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT)
        if self.channel is None:
            await self.close("connect_timeout")

    async def _shutdown(self, reason: str) -> None:
        """The edge ends the session (shutting down, or the client reconnected elsewhere)."""
        await self.close(reason, goodbye=True)

    async def close(self, reason: str, *, goodbye: bool = False) -> None:
        """End the peer connection and record `session.ended` with `reason` (once)."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.end_reason = reason
        try:
            channel = self.channel
            if goodbye and channel is not None and channel.readyState == "open":
                self.send_json({"type": "goodbye", "reason": reason})
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(GOODBYE_FLUSH):
                        while channel.bufferedAmount:
                            await asyncio.sleep(0.01)
                    await asyncio.sleep(0.05)  # handed to SCTP: let it leave
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()
            self.downlink.stop()
            with contextlib.suppress(Exception):
                await self.pc.close()
            await self.link.close(reason)
        finally:
            self.closed.set()
            if self.on_closed is not None:
                self.on_closed(self)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a webrtc task failed", exc_info=task.exception(),
                      extra={"session": self.link.session_id})
