"""`/ws`: text chat and integrations over one WebSocket, in the event vocabulary.

Query parameters: `token` (an access token; or an `Authorization: Bearer` header),
`assistant_id`, `session_id` (resume within 60 s), `audio` (`none` by default, `pcm16`
for 16 kHz mono PCM frames up and 24 kHz down, `opus` for 16 kHz / 60 ms Opus up and
24 kHz Opus down), `echo_cancelled` (`true` or `false`: whether the client's microphone
cancels its speaker's echo; when not `true`, the ASR takes it out, `[asr.turn] echo`).

Client → server, JSON text: `{"type":"user.text","text":…}`,
`{"type":"user.image","image":<base64 JPEG, PNG or WebP>,"text":<question, optional>}`
(edge/realtime/images.py), `{"type":"abort"}`,
`{"type":"listen.start","mode":"auto|manual|realtime"}`, `{"type":"listen.stop"}`; binary
frames are audio. Server → client: `{"type":"session","session_id":…,"resumed":…}` first,
then every event of the session as JSON (DESIGN §3), audio as binary frames, and
`{"type":"error","code":…,"message":…}` for a refused message. A session refused for want of
capacity (`session.refused`) gets the error `busy` (`details.retry_after`, seconds) and the
close 1013.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from edge import jsonparse
from edge.errors import ApiError
from edge.realtime.auth import bearer, user_caller
from edge.realtime.connection import Connection, serve
from edge.realtime.images import UserImageMessage, may_exceed_frame, ws_image
from edge.realtime.messages import CLIENT_MESSAGES, ListenStartMessage, UserTextMessage, checked_text
from edge.realtime.session import SessionLink
from schemas import AudioParams, Event, SessionRefused, is_token, to_json

log = logging.getLogger("vagent.edge.ws")
# Photos come on /ws only: a WebRTC data channel is for talking.
MESSAGES: dict[str, type[msgspec.Struct]] = {**CLIENT_MESSAGES, "user.image": UserImageMessage}
AUDIO = {
    "none": (None, None),
    "pcm16": (AudioParams(format="pcm16", sample_rate=16000, frame_duration=20),
              AudioParams(format="pcm16", sample_rate=24000, frame_duration=20)),
    "opus": (AudioParams(format="opus", sample_rate=16000, frame_duration=60),
             AudioParams(format="opus", sample_rate=24000, frame_duration=60)),
}

FLAGS: dict[str, bool | None] = {"": None, "true": True, "false": False}


async def ws_endpoint(websocket: WebSocket) -> None:
    await serve(websocket, _serve, "ws")


async def _serve(conn: Connection) -> None:
    websocket = conn.websocket
    services = conn.services
    params = websocket.query_params
    audio = params.get("audio", "none")
    if audio not in AUDIO:
        await conn.refuse(ApiError(422, "bad_audio", f"audio must be one of {', '.join(AUDIO)}"))
        return
    said = params.get("echo_cancelled", "")
    if said not in FLAGS:
        await conn.refuse(ApiError(422, "validation_failed", "echo_cancelled must be true or false",
                                   {"at": "echo_cancelled"}))
        return
    for name in ("session_id", "assistant_id"):
        value = params.get(name)
        if value and not is_token(value):
            await conn.refuse(ApiError(422, "validation_failed", f"{name} is not an id", {"at": name}))
            return
    try:
        caller = await user_caller(services, bearer(websocket.headers.get("authorization"),
                                                    params.get("token")), params.get("assistant_id"))
    except ApiError as error:
        await conn.refuse(error)
        return

    async def deliver(event: Event) -> None:
        await conn.send_bytes_text(to_json(event))
        if isinstance(event, SessionRefused):
            await conn.refused(event)

    audio_in, audio_out = AUDIO[audio]
    link = SessionLink(services.bus, conn.registry, caller, transport="ws", audio_in=audio_in,
                       audio_out=audio_out, turns=conn.turn_limit(), on_event=deliver,
                       on_audio=conn.send_audio if audio_out else None,
                       echo_cancelled=FLAGS[said])
    try:
        sid = await link.open(params.get("session_id") or None)
    except ApiError as error:
        await conn.refuse(error)
        return
    conn.attach(link)
    await conn.send_json({"type": "session", "session_id": sid, "resumed": link.resumed})
    await link.start()
    reason = "client_closed"
    try:
        while True:
            # A photo may exceed the frame limit; read at the time, as the settings may change.
            message = await conn.receive(lambda data: may_exceed_frame(data, services.config.vision))
            if message is None:
                break
            if isinstance(message, bytes):
                if audio_in is None:
                    await conn.send_error("audio_not_negotiated",
                                          "connect with ?audio=pcm16 or opus to send audio")
                    continue
                await link.audio(message)
                continue
            await _command(conn, link, message)
    except WebSocketDisconnect:
        pass
    except Exception as exc:
        # The default log format has no traceback: the line itself must say why.
        log.exception("ws connection failed", extra={"session": sid,
                                                     "error": f"{type(exc).__name__}: {exc}"})
        reason = "error"
    finally:
        await conn.finish(link, conn.end_reason or reason)


async def _command(conn: Connection, link: SessionLink, raw: str) -> None:
    try:
        kind, command = jsonparse.parse_message(raw, MESSAGES)
        match command:
            case UserTextMessage():
                await link.text(checked_text(command.text, conn.services.config.edge.max_text_chars))
            case UserImageMessage():
                await ws_image(link, command, conn.services.config.vision)
            case ListenStartMessage():
                await link.listen_start(command.mode)
            case _ if kind == "abort":
                await link.abort()
            case _ if kind == "listen.stop":
                await link.listen_stop()
    except (jsonparse.JsonInputError, ApiError) as error:
        await conn.reject(error)
