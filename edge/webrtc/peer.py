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
import re
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
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS
from aiortc.sdp import SessionDescription

from edge import jsonparse
from edge.errors import ApiError
from edge.realtime.limits import MessageRate, RefusalLog, TurnLimit, busy
from edge.realtime.messages import CLIENT_MESSAGES, Bare, ListenStartMessage, UserTextMessage, checked_text
from edge.realtime.session import Caller, SessionLink
from edge.services import Services
from edge.webrtc.audio import DOWNLINK, UPLINK, DownlinkTrack, Uplink
from schemas import Event, SessionRefused, to_json

log = logging.getLogger("vagent.edge.webrtc")

CHANNEL = "events"  # the data channel's label
CONNECT_TIMEOUT = 30.0  # seconds from the answer to an open data channel
MAX_BACKLOG = 2000  # messages held for a channel not yet open
GOODBYE_FLUSH = 0.25  # seconds for a goodbye to leave before the connection closes
# A browser's offer is a few kB. aiortc parses an offer on the event loop (about 1.3 ms
# per 4 kB) and sets up a transceiver per m-line (~1.4 ms each): both are capped before
# any parsing, so that no offer holds the loop long.
MAX_SDP_CHARS = 16_384
MAX_MEDIA = 4  # m-lines: a call needs two (audio, the data channel)
# Naming the line an offer fails at parses it again, once per halving of its lines: done
# for an offer of a browser's size, not for one padded to the limit (a dozen parses more).
NAMED_LINE_CHARS = 4096
# An m-line as aiortc finds them: at the start of what `str.splitlines` calls a line.
MEDIA_LINE = re.compile("(?:^|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029])m=")
# the data channel's vocabulary: /ws's, and hangup
MESSAGES: dict[str, type[msgspec.Struct]] = {**CLIENT_MESSAGES, "hangup": Bare}


def bad_offer(reason: str, **details: Any) -> ApiError:
    log.info("offer refused", extra={"code": "bad_offer", "reason": reason})
    return ApiError(422, "bad_offer", reason, details)


def read_offer(sdp: str) -> SessionDescription:
    """The offer, parsed and checked for what aiortc needs but only finds out later.

    aiortc's parser raises whatever the line it chokes on makes it raise (AssertionError,
    KeyError, IndexError, StopIteration…); an offer without `a=fingerprint` (or `a=setup`,
    or ICE credentials) parses, gets an answer, then fails in a task of its own that nobody
    awaits. Both are refused here as `422 bad_offer` naming the line (in an offer of up to
    NAMED_LINE_CHARS) or the section.

    Pure parsing, up to tens of ms for a long offer that fails at its end (finding the line
    parses again): run it off the event loop (`asyncio.to_thread`)."""
    check_offer_size(sdp)
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # any exception: the parser does not choose its own
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if len(sdp) > NAMED_LINE_CHARS:
            raise bad_offer(f"the offer cannot be read ({why})") from None
        number, line = _failing_line(sdp)
        raise bad_offer(f"the offer's line {number} cannot be read ({why}): {line[:100]!r}",
                        line=number) from None
    for index, media in enumerate(description.media):
        section = f"m-line {index + 1} ({media.kind})"
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise bad_offer(f"{section} has no a=ice-ufrag and a=ice-pwd", media=index)
        if media.dtls is None:
            raise bad_offer(f"{section} has no a=setup (actpass, active or passive)", media=index)
        if not any(f.algorithm.lower() in X509_DIGEST_ALGORITHMS for f in media.dtls.fingerprints):
            raise bad_offer(f"{section} has no a=fingerprint with "
                            f"{', '.join(sorted(X509_DIGEST_ALGORITHMS))}", media=index)
    return description


def check_offer_size(sdp: str) -> None:
    """What costs nothing to check, before anything parses the offer: its length and how
    many media sections it has."""
    if len(sdp) > MAX_SDP_CHARS:
        raise bad_offer(f"the offer is longer than {MAX_SDP_CHARS} characters")
    sections = len(MEDIA_LINE.findall(sdp))
    if sections > MAX_MEDIA:
        raise bad_offer(f"the offer has {sections} m-lines: at most {MAX_MEDIA}")


def _failing_line(sdp: str) -> tuple[int, str]:
    """The first line (1-based) whose prefix does not parse: a binary search over prefixes,
    as the whole failed and the empty one parses."""
    lines = sdp.splitlines()
    good, bad = 0, len(lines)
    while bad - good > 1:
        middle = (good + bad) // 2
        try:
            SessionDescription.parse("\n".join(lines[:middle]))
            good = middle
        except Exception:
            bad = middle
    return bad, lines[bad - 1] if lines else ""


class Peer:
    def __init__(self, services: Services, caller: Caller, address: str, *,
                 echo_cancelled: bool | None = None) -> None:
        self.services = services
        edge = services.config.edge
        self.max_message = edge.max_frame_bytes
        self.rate = MessageRate(edge.max_messages_per_second)
        self.refusals = RefusalLog(log)
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=url) for url in edge.ice_servers]))
        self.downlink = DownlinkTrack()
        self.link = SessionLink(services.bus, services.links, caller, transport="webrtc",
                                audio_in=UPLINK, audio_out=DOWNLINK,
                                turns=TurnLimit(edge, services.turns.bucket(address)),
                                on_event=self._event, on_audio=self._audio,
                                echo_cancelled=echo_cancelled)
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

    async def negotiate(self, sdp: str, offer: SessionDescription) -> str:
        """The answer to the client's offer (`offer`: `sdp` as `read_offer` read it), with
        every local candidate gathered."""
        kinds = [m.kind for m in offer.media]
        if "application" not in kinds:
            raise bad_offer(f"the offer has no data channel: create the {CHANNEL!r} channel "
                            "before the offer", media=kinds)
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc says ValueError mostly, but not always
            raise bad_offer(f"the offer was refused: {type(exc).__name__}: {exc}") from None
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
        if isinstance(event, SessionRefused):  # no voice worker had room for it
            error = busy(event)
            self.send_error(error.code, error.message, error.details)
            self._spawn(self.close(error.code, goodbye=True))

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

    def send_error(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Tell the client why a message was refused (the session goes on), and the log."""
        self.refusals.refused(code, message, {"path": "webrtc", "session": self.link.session_id})
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if details:
            error["details"] = details
        self.send_json(error)

    def reject(self, error: ApiError | jsonparse.JsonInputError) -> None:
        if isinstance(error, jsonparse.JsonInputError):
            error = error.api_error(jsonparse.MESSAGE_CODES)
        self.send_error(error.code, error.message, error.details)

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
            kind, command = jsonparse.parse_message(raw, MESSAGES)
            match command:
                case UserTextMessage():
                    await self.link.text(checked_text(command.text,
                                                      self.services.config.edge.max_text_chars))
                case ListenStartMessage():
                    await self.link.listen_start(command.mode)
                case _ if kind == "abort":
                    self.downlink.flush()
                    await self.link.abort()
                case _ if kind == "hangup":
                    await self.close("hangup")
                    return False
                case _ if kind == "listen.stop":
                    await self.link.listen_stop()
        except (jsonparse.JsonInputError, ApiError) as error:
            self.reject(error)
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
            self.refusals.flush()
            self.closed.set()
            if self.on_closed is not None:
                self.on_closed(self)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a webrtc task failed", exc_info=exc, extra={"session": self.link.session_id})
