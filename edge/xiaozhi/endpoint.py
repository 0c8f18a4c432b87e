"""`/xiaozhi/v1/`: ESP32 xiaozhi devices and their desktop clients (DESIGN §5).

The device connects with `Authorization: Bearer <device token>`, `Protocol-Version`,
`Device-Id` and `Client-Id` (headers, or query parameters for browsers), says hello
within `edge.hello_timeout`, and is answered with the session id and the downlink audio
format. Then Opus frames flow up (framed by the protocol version) into the session's
`audio.in`, its JSON messages become session events, and the session's events come back
as `stt`, `llm`, `tts` and `mcp` messages with the answer's Opus frames between
`tts start` and `tts stop`. A session with no speech or text for `edge.idle_timeout` is
told goodbye and closed (reason `idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from starlette.websockets import WebSocket

from edge import jsonparse
from edge.errors import ApiError
from edge.realtime.auth import device_caller
from edge.realtime.connection import Connection, serve
from edge.realtime.limits import TRY_LATER, busy
from edge.realtime.messages import checked_text
from edge.realtime.session import Caller, SessionLink
from edge.xiaozhi import framing, protocol, vision
from edge.xiaozhi.mcp import CallResult, McpClient, McpError
from schemas import (
    AssistantSentence,
    Error,
    Event,
    SessionEnded,
    SessionRefused,
    SpeechStarted,
    ToolCall,
    TranscriptFinal,
    TtsSentence,
    TtsStarted,
    TtsStopped,
    TurnStarted,
    UserText,
)

log = logging.getLogger("vagent.edge.xiaozhi")
EARLY_FRAMES = 32  # downlink frames held when they overtake their `tts.started`
EARLY_MAX_AGE = 0.5  # … for at most this long
BAD_FRAME_REPORT_S = 5.0  # at most one bad-frame error per this many seconds
EXIT_START_S = 3.0  # after the dialogue ended the session: the goodbye starts this soon …
EXIT_GRACE_S = 15.0  # … and lasts at most this long
# The hello's refusals: malformed or too deep → 4400, a field of the wrong type → 4422.
HELLO_CODES: dict[jsonparse.Problem, tuple[int, str]] = {
    **jsonparse.MESSAGE_CODES, "invalid": (422, "bad_hello"),
}


async def xiaozhi_endpoint(websocket: WebSocket) -> None:
    await serve(websocket, _serve, "xiaozhi")


async def _serve(conn: Connection) -> None:
    websocket = conn.websocket
    try:
        shake = protocol.handshake(websocket.headers, websocket.query_params)
        if shake.device_id is None:
            raise ApiError(400, "device_id_missing",
                           "send a Device-Id header (or a device-id query parameter)")
        caller = await device_caller(conn.services, shake.token, shake.device_id, shake.client_id)
    except ApiError as error:
        await conn.refuse(error)
        return
    hello = await _hello(conn, shake.version)
    if hello is None:
        return
    if hello.language is None and caller.user_id is None:
        # An anonymous device talks to the default assistant, which heeds the client's
        # language: the one its OTA check asked for (Accept-Language), when its hello names none.
        hello = dataclasses.replace(hello, language=await conn.services.devices.language(
            shake.device_id))
    await DeviceSession(conn, caller, hello).run()


async def _hello(conn: Connection, said: int | None) -> protocol.Hello | None:
    """The device's hello, or None once it was refused (or went away)."""
    timeout = conn.services.config.edge.hello_timeout
    try:
        async with asyncio.timeout(timeout):
            message = await conn.receive()
    except TimeoutError:
        await conn.refuse(ApiError(408, "hello_timeout", f"no hello within {timeout:g} s"))
        return None
    if message is None:
        return None
    if isinstance(message, bytes):
        frame = None
        with contextlib.suppress(framing.FrameError):
            frame = framing.unpack(said or 1, message) if said in (2, 3) else None
        if frame is None or frame.kind != framing.JSON:
            await conn.refuse(ApiError(400, "hello_required", "send a hello before any audio"))
            return None
        message = frame.payload
    try:
        parsed: object = jsonparse.parse(message)
    except jsonparse.JsonInputError as error:
        await conn.refuse(error.api_error(HELLO_CODES))
        return None
    if not isinstance(parsed, dict) or parsed.get("type") != "hello":
        await conn.refuse(ApiError(400, "hello_required", "the first message must be a hello"))
        return None
    try:
        return protocol.parse_hello(parsed, said)
    except ApiError as error:
        await conn.refuse(error)
        return None


class DeviceSession:
    """One connected device: its session link, downlink state and MCP client."""

    def __init__(self, conn: Connection, caller: Caller, hello: protocol.Hello) -> None:
        self.conn = conn
        self.hello = hello
        self.version = hello.version
        self.link = SessionLink(conn.services.bus, conn.registry, caller, transport="xiaozhi",
                                audio_in=hello.uplink, audio_out=hello.downlink,
                                turns=conn.turn_limit(),
                                on_event=self._on_event, on_audio=self._on_audio,
                                language=hello.language, echo_cancelled=hello.echo_cancelled)
        self.mcp = McpClient(self._send_mcp) if hello.mcp else None
        self.frame_ms = hello.downlink.frame_duration
        self.speaking = False  # between the `tts start` and `tts stop` sent to the device
        self.muted = False  # aborted: no audio until the next turn's speech
        self.tts_turn: str | None = None
        self.turn: str | None = None  # the latest turn (named after its input)
        self.dropped: set[str] = set()  # aborted turns: their late speech is not played
        self.emoted: set[str] = set()  # turns whose `llm` emotion was sent
        self.calls: set[str] = set()  # tool calls answered (or being answered)
        self.early: list[tuple[float, bytes]] = []
        self.sent_ms = 0  # downlink audio sent, for v2 timestamps
        self.exit_turn: str | None = None
        self.exit_spoken = asyncio.Event()  # the goodbye's speech started
        self.bad_frame_reported = 0.0
        self.active_at = time.monotonic()  # the latest speech, text or answer, either side
        self.tasks: set[asyncio.Task[Any]] = set()
        self.call_tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        conn, link = self.conn, self.link
        try:
            sid = await link.open()
        except ApiError as error:
            await conn.refuse(error)
            return
        conn.attach(link)
        reason = "client_closed"
        try:
            # Recorded before the device hears back: the ASR claims the session while the
            # hello travels, so the first frames find it listening.
            try:
                await link.start()
            except ApiError as error:  # what the hello said would not be readable
                await conn.refuse(error)
                return
            await conn.send_json(protocol.server_hello(sid, self.hello.downlink))
            self.active_at = time.monotonic()
            self._spawn(self._idle_watch())
            if self.mcp is not None:
                self._spawn(self._mcp_setup())
            while True:
                message = await conn.receive()
                if message is None:
                    break
                if isinstance(message, bytes):
                    await self._binary(message)
                else:
                    await self._text(message)
        except Exception as exc:
            # The default log format has no traceback: the line itself must say why.
            log.exception("xiaozhi connection failed",
                          extra={"session": sid, "error": f"{type(exc).__name__}: {exc}"})
            reason = "error"
        finally:
            await self._wind_down()
            await conn.finish(link, conn.end_reason or reason)

    async def _wind_down(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.mcp is not None:
            self.mcp.close()  # pending calls end as error results the dialogue can read
        if self.call_tasks:
            await asyncio.wait(self.call_tasks, timeout=2.0)
        for task in self.tasks | self.call_tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def _spawn(self, coro: Any, calls: bool = False) -> None:
        task = asyncio.create_task(coro)
        bucket = self.call_tasks if calls else self.tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)

    # --- device → session -----------------------------------------------------------------

    async def _binary(self, data: bytes) -> None:
        try:
            frame = framing.unpack(self.version, data)
        except framing.FrameError as exc:
            now = time.monotonic()
            if now - self.bad_frame_reported >= BAD_FRAME_REPORT_S:
                self.bad_frame_reported = now
                await self.conn.send_error("bad_frame", f"protocol v{self.version}: {exc}")
            return
        if frame.kind == framing.JSON:
            await self._text(frame.payload)
        else:
            await self.link.audio(frame.payload)

    async def _text(self, raw: str | bytes) -> None:
        try:
            kind, message = jsonparse.parse_message(raw, protocol.DEVICE_MESSAGES)
            match message:
                case protocol.Listen():
                    await self._listen(message)
                case protocol.McpMessage():
                    if self.mcp is not None:
                        self.mcp.received(message.payload)
                case _ if kind == "abort":
                    await self._abort()
                case _ if kind == "hello":  # said again: the same answer
                    await self.conn.send_json(protocol.server_hello(self.link.session_id,
                                                                    self.hello.downlink))
                case _ if kind == "goodbye":
                    self.conn.end_reason = "client_goodbye"
                    await self.conn.close(1000, "goodbye")
                case _:  # iot, sentence_end, tts, ping, pong: accepted and ignored
                    pass
        except (jsonparse.JsonInputError, ApiError) as error:
            await self.conn.reject(error)

    async def _listen(self, message: protocol.Listen) -> None:
        """Raises ApiError for a listen the session cannot take."""
        if message.state != "stop":  # the user pressed to talk or said the wake word
            self.active_at = time.monotonic()
        match message.state:
            case "start":
                await self.link.listen_start(message.mode or "auto")
            case "stop":
                await self.link.listen_stop()
            case "detect":
                if message.text is None:
                    raise ApiError(422, "bad_message", "listen detect needs a text", {"at": "$.text"})
                # Checked before the wake word is taken off: the limit is on what was sent.
                edge = self.conn.services.config.edge
                text = checked_text(message.text, edge.max_text_chars,
                                    "listen detect") if message.text.strip() else ""
                rest = protocol.after_wake_word(text, edge.xiaozhi.wake_words)
                typed = text.strip() if rest is None else rest.strip()
                if typed:  # a wake word alone opens no turn
                    await self.link.text(typed, source="detect")

    async def _abort(self) -> None:
        """The device stopped the answer: silence now, and stop the turn everywhere."""
        if self.turn is not None:
            self.dropped.add(self.turn)
        if self.tts_turn is not None:
            self.dropped.add(self.tts_turn)
        self.muted = True
        self.early.clear()
        was_speaking, self.speaking = self.speaking, False
        if was_speaking:
            await self.conn.send_json({"type": "tts", "state": "stop"})
        await self.link.abort()

    # --- session → device -----------------------------------------------------------------

    async def _on_event(self, event: Event) -> None:
        send = self.conn.send_json
        if isinstance(event, SpeechStarted | TranscriptFinal | UserText | TurnStarted | TtsStarted
                      | TtsStopped):
            self.active_at = time.monotonic()
        match event:
            case TranscriptFinal() | UserText():
                self.turn = event.id
                await send({"type": "stt", "text": event.text})
            case TurnStarted():
                self.turn = event.turn_id
            case AssistantSentence():
                turn = event.turn_id or event.id
                if turn not in self.emoted and turn not in self.dropped:
                    self.emoted.add(turn)
                    emoji, emotion = protocol.emotion_of(event.display_text or event.text)
                    await send({"type": "llm", "text": emoji, "emotion": emotion})
            case TtsStarted():
                if event.turn_id in self.dropped:
                    return
                self.speaking, self.muted, self.tts_turn = True, False, event.turn_id
                if self.exit_turn is not None and event.turn_id == self.exit_turn:
                    self.exit_spoken.set()
                early, self.early = self.early, []
                await send({"type": "tts", "state": "start"})
                horizon = time.monotonic() - EARLY_MAX_AGE
                for at, frame in early:
                    if at >= horizon:
                        await self._send_frame(frame)
            case TtsSentence():
                if self.speaking and event.turn_id == self.tts_turn:
                    await send({"type": "tts", "state": "sentence_start", "text": event.text})
            case TtsStopped():
                if self.speaking and event.turn_id == self.tts_turn:
                    self.speaking = False
                    await send({"type": "tts", "state": "stop"})
                if self.exit_turn is not None and event.turn_id == self.exit_turn:
                    await self._leave("user_exit")
            case ToolCall():
                if event.route == "device" and event.call_id not in self.calls:
                    self.calls.add(event.call_id)
                    self._spawn(self._call(event), calls=True)
            case SessionEnded():  # the dialogue ended it (the user said goodbye)
                self.exit_turn = event.turn_id
                self._spawn(self._leave_later(event.reason))
            case Error():
                await send({"type": "alert", "status": "error", "message": event.message,
                            "emotion": "sad"})
            case SessionRefused():  # no voice worker had room: the device shows why, idles
                error = busy(event)
                await send({"type": "alert", "status": "error", "message": error.message,
                            "emotion": "sad"})
                self.conn.end_reason = error.code
                await self.conn.close(TRY_LATER, error.code)

    async def _on_audio(self, frame: bytes) -> None:
        if self.speaking:
            await self._send_frame(frame)
        elif not self.muted and len(self.early) < EARLY_FRAMES:
            self.early.append((time.monotonic(), frame))

    async def _send_frame(self, frame: bytes) -> None:
        await self.conn.send_audio(framing.pack(self.version, frame, self.sent_ms))
        self.sent_ms += self.frame_ms

    async def _idle_watch(self) -> None:
        """A device left on with no one talking holds a session (and an ASR stream) open:
        after edge.idle_timeout without speech or text it is told goodbye and closed."""
        timeout = self.conn.services.config.edge.idle_timeout
        while True:
            left = self.active_at + timeout - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
            elif self.speaking or self.exit_turn is not None:  # answering, or already leaving
                self.active_at = time.monotonic()
            else:
                await self.conn.send_json({"type": "goodbye", "session_id": self.link.session_id})
                await self._leave("idle")
                return

    async def _leave(self, reason: str) -> None:
        self.conn.end_reason = reason
        await self.conn.close(1000, reason)

    async def _leave_later(self, reason: str) -> None:
        """Close once the goodbye was spoken (its `tts.stopped` closes), or soon when it is
        not spoken at all, or after a grace period."""
        if self.exit_turn is not None:
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout: 3.11's wait_for can swallow _wind_down's cancellation.
                async with asyncio.timeout(EXIT_START_S):
                    await self.exit_spoken.wait()
                await asyncio.sleep(EXIT_GRACE_S)
        await self._leave(reason)

    # --- MCP --------------------------------------------------------------------------------

    async def _send_mcp(self, payload: dict[str, Any]) -> None:
        await self.conn.send_json({"session_id": self.link.session_id, "type": "mcp",
                                   "payload": payload})

    async def _mcp_setup(self) -> None:
        assert self.mcp is not None
        try:
            specs = await self.mcp.initialize(vision.capability(
                self.conn.websocket, self.conn.services, self.link.session_id,
                self.link.caller.device_id or ""))
        except McpError as exc:
            log.warning("the device's MCP tools are unavailable",
                        extra={"session": self.link.session_id, "error": str(exc)})
            return
        await self.link.tools(specs)
        log.info("device tools listed", extra={"session": self.link.session_id,
                                               "tools": [s.name for s in specs]})

    async def _call(self, event: ToolCall) -> None:
        if self.mcp is None:
            result = CallResult("this device offers no tools", True)
        else:
            result = await self.mcp.call(event.name, event.arguments)
        await self.link.tool_result(event.call_id, event.name, result.content, turn_id=event.turn_id,
                                    is_error=result.is_error, causation_id=event.id)
