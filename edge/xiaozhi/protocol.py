"""The xiaozhi protocol's messages (DESIGN §5): the handshake, the hello exchange, the
device's JSON messages, and what the edge says back (emotions, wake words)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.datastructures import Headers, QueryParams

from domain.language import spoken_language
from edge import jsonparse
from edge.errors import ApiError
from edge.realtime.auth import bearer
from edge.realtime.messages import ListenMode
from edge.xiaozhi.framing import VERSIONS
from schemas import AudioParams, is_token

PATH = "/xiaozhi/v1/"
UPLINK = AudioParams(format="opus", sample_rate=16000, channels=1, frame_duration=60)
DOWNLINK = AudioParams(format="opus", sample_rate=24000, channels=1, frame_duration=60)
# What the Opus codec takes (audio/encode.py OPUS_RATES, OPUS_FRAME_MS; a
# test keeps them equal), spelled as types so that a hello is checked by decoding it.
OpusRate = Literal[8000, 12000, 16000, 24000, 48000]
OpusFrameMs = Literal[5, 10, 20, 40, 60, 80, 100, 120]
Channels = Annotated[int, Meta(ge=1, le=2)]
# A Client-Id is a UUID; anything printable up to 128 characters is taken as it is.
CLIENT_ID = re.compile(r"^[!-~]{1,128}$")
# What each hello field must be, for refusals that say so (msgspec names the type only).
HELLO_RULES = {
    "format": "'opus'", "sample_rate": "one of 8000, 12000, 16000, 24000, 48000",
    "channels": "1 or 2", "frame_duration": "one of 5, 10, 20, 40, 60, 80, 100, 120 (ms)",
    "transport": "'websocket'", "version": "1, 2 or 3", "mcp": "true or false",
}
# Wake words a device reports with `listen detect`: alone they open no turn (an assistant
# with a greeting already greeted at session start); before other words they are dropped.
WAKE_WORDS = ("你好小智", "你好小志", "小爱同学", "你好小鑫", "你好小新", "小美同学", "小龙小龙",
              "喵喵同学", "小滨小滨", "小冰小冰", "嘿你好呀", "hi xiaozhi", "hey xiaozhi",
              "hello xiaozhi", "ni hao xiaozhi", "hi esp", "hey esp", "alexa", "hey jarvis")
# xiaozhi's emotions and the emoji each one shows (`llm {text, emotion}`).
EMOTIONS = {
    "neutral": "😶", "happy": "🙂", "laughing": "😆", "funny": "😂", "sad": "😔", "angry": "😠",
    "crying": "😭", "loving": "😍", "embarrassed": "😳", "surprised": "😯", "shocked": "😱",
    "thinking": "🤔", "winking": "😉", "cool": "😎", "relaxed": "😌", "delicious": "🤤",
    "kissy": "😘", "confident": "😏", "sleepy": "😴", "silly": "😜", "confused": "🙄",
}
_EMOJI = {emoji: emotion for emotion, emoji in EMOTIONS.items()} | {
    "😊": "happy", "😀": "laughing", "😃": "laughing", "😄": "laughing", "😁": "laughing",
    "🤣": "funny", "😢": "crying", "😞": "sad", "😡": "angry", "❤": "loving", "🥰": "loving",
    "😮": "surprised", "😲": "shocked", "😇": "relaxed", "😋": "delicious", "😍": "loving",
    "😐": "neutral", "😕": "confused", "🤨": "confused", "😪": "sleepy", "🤪": "silly",
}
DEFAULT_EMOTION = "happy"


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the device said when it connected (headers, or query parameters for browsers)."""

    token: str | None
    version: int | None  # None: not said (then the hello's, else 1)
    device_id: str | None
    client_id: str | None


def handshake(headers: Headers, query: QueryParams) -> Handshake:
    """Raises ApiError (401 for a malformed Authorization, 400 for a bad version)."""
    header = headers.get("authorization")
    raw = (query.get("authorization") or "").strip()
    if not header and raw:  # the firmware's rule: a token without a scheme is a bearer token
        header = raw if " " in raw else f"Bearer {raw}"
    token = bearer(header, query.get("token"))
    said = headers.get("protocol-version") or query.get("protocol-version")
    version = check_version(said) if said else None
    device = (headers.get("device-id") or query.get("device-id") or query.get("device_id") or "").strip()
    client = (headers.get("client-id") or query.get("client-id") or query.get("client_id") or "").strip()
    check_ids(device, client)
    return Handshake(token, version, device or None, client or None)


def check_ids(device: str, client: str) -> None:
    """Raises ApiError 400 for a Device-Id or Client-Id that is given but malformed."""
    # Both are recorded in session.started, and the Device-Id keys subjects and KV entries.
    if device and not is_token(device):
        raise ApiError(400, "invalid_device_id",
                       "Device-Id must be 1-128 of A-Z a-z 0-9 _ - : @ + = (a MAC address)")
    if client and not CLIENT_ID.match(client):
        raise ApiError(400, "invalid_client_id", "Client-Id must be 1-128 printable ASCII characters")


def check_version(value: object) -> int:
    try:
        version = int(str(value).strip())
    except ValueError:
        version = -1
    if version not in VERSIONS:
        raise ApiError(400, "unsupported_protocol_version",
                       f"Protocol-Version must be 1, 2 or 3, not {value!r}")
    return version


class UplinkParams(msgspec.Struct):
    """`audio_params` of a hello: the device's microphone. Fields left out take the
    firmware's defaults; unknown ones are ignored."""

    format: Literal["opus"] = "opus"
    sample_rate: OpusRate = 16000
    channels: Channels = 1
    frame_duration: OpusFrameMs = 60

    def params(self) -> AudioParams:
        return AudioParams(format=self.format, sample_rate=self.sample_rate, channels=self.channels,
                           frame_duration=self.frame_duration)


class DownlinkParams(UplinkParams):
    """`downlink_audio_params` (a vagent extension): what the device wants to hear."""

    sample_rate: OpusRate = 24000


class Features(msgspec.Struct):
    mcp: bool = False
    aec: bool | None = None  # the device cancels its own speaker's echo


class HelloMessage(msgspec.Struct):
    type: Literal["hello"]
    version: int | str | None = None  # 1, 2, 3 (or "1"…); a Protocol-Version header wins
    transport: Literal["websocket"] = "websocket"
    features: Features | None = None
    audio_params: UplinkParams | None = None
    downlink_audio_params: DownlinkParams | None = None
    language: Annotated[str, Meta(max_length=35)] | None = None  # "zh-CN", "en-US"…


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    mcp: bool
    uplink: AudioParams
    downlink: AudioParams
    language: str | None = None  # zh or en, when the device named one of them
    echo_cancelled: bool | None = None  # `features.aec`, when the device said


def parse_hello(message: object, said: int | None) -> Hello:
    """The device's hello (parsed JSON); raises ApiError 422 `bad_hello` for a field of the
    wrong type or out of range, naming the field and what it must be."""
    try:
        hello = jsonparse.convert(message, HelloMessage)
    except jsonparse.JsonInputError as error:
        field = (error.at or "$").rpartition(".")[2]
        rule = HELLO_RULES.get(field)
        where = (error.at or "$").removeprefix("$.")
        reason = f"{where} must be {rule} ({error.reason})" if rule else error.reason
        raise ApiError(422, "bad_hello", reason, error.details) from None
    version = said if said is not None else (
        check_version(hello.version) if hello.version is not None else 1)
    return Hello(version, bool(hello.features and hello.features.mcp),
                 (hello.audio_params or UplinkParams()).params(),
                 (hello.downlink_audio_params or DownlinkParams()).params(),
                 spoken_language(hello.language),
                 hello.features.aec if hello.features else None)


# --- the device's messages within a session --------------------------------------------------


class Listen(msgspec.Struct):
    state: Literal["start", "stop", "detect"]
    mode: ListenMode | None = None  # start: None is auto
    text: str | None = None  # detect: what the wake word engine (or a typed client) heard


class McpMessage(msgspec.Struct):
    payload: dict[str, Any]  # a JSON-RPC 2.0 message


class Unread(msgspec.Struct):
    """A message whose fields the edge does not read (abort, goodbye, iot, …): only its type
    matters, so nothing else in it is held against the device."""


DEVICE_MESSAGES: dict[str, type[msgspec.Struct]] = {
    "listen": Listen, "mcp": McpMessage, "abort": Unread, "hello": Unread, "goodbye": Unread,
    **{kind: Unread for kind in ("iot", "sentence_end", "tts", "ping", "pong")},
}


def server_hello(session_id: str, downlink: AudioParams) -> dict[str, Any]:
    return {"type": "hello", "transport": "websocket", "session_id": session_id,
            "audio_params": {"format": downlink.format, "sample_rate": downlink.sample_rate,
                             "channels": downlink.channels,
                             "frame_duration": downlink.frame_duration}}


def emotion_of(text: str) -> tuple[str, str]:
    """(emoji, emotion) for an answer: its first emoji xiaozhi knows, else the default."""
    for char in text:
        emotion = _EMOJI.get(char)
        if emotion:
            return EMOTIONS[emotion], emotion
    return EMOTIONS[DEFAULT_EMOTION], DEFAULT_EMOTION


def _fold(char: str) -> str:
    """A character as wake words are compared: lower case; punctuation, spaces and
    symbols dropped."""
    if unicodedata.category(char)[0] in "PZSC":
        return ""
    return char.lower()


def after_wake_word(text: str, extra: Sequence[str] = ()) -> str | None:
    """The text after a leading wake word, built-in or `extra` ("" for the wake word alone),
    or None when the text does not start with one."""
    for word in (*WAKE_WORDS, *extra):
        target = "".join(_fold(c) for c in word)
        if not target:
            continue
        matched = 0
        for i, char in enumerate(text):
            folded = _fold(char)
            if not folded:
                continue
            if target[matched:matched + len(folded)] != folded:
                break
            matched += len(folded)
            if matched == len(target):
                rest = text[i + 1:]
                # "hi xiaozhi…" must not match "hi xiaozhinho": a Latin word must end.
                if rest and rest[0].isalnum() and char.isascii() and rest[0].isascii():
                    break
                return rest.lstrip(" ,.!?;:，。！？、；：")
    return None
