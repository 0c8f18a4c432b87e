"""The xiaozhi protocol's messages (DESIGN §5): the handshake, the hello exchange, the
device's JSON messages, and what the edge says back (emotions, wake words)."""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, QueryParams

from actors.audio.encode import OPUS_FRAME_MS, OPUS_RATES
from edge.errors import ApiError
from edge.realtime.auth import bearer
from edge.xiaozhi.framing import VERSIONS
from schemas import AudioParams

PATH = "/xiaozhi/v1/"
UPLINK = AudioParams(format="opus", sample_rate=16000, channels=1, frame_duration=60)
DOWNLINK = AudioParams(format="opus", sample_rate=24000, channels=1, frame_duration=60)
LISTEN_MODES = ("auto", "manual", "realtime")
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
    raw = query.get("authorization")
    token = bearer(headers.get("authorization"), None)
    if token is None and raw:
        token = bearer(raw, None) if " " in raw.strip() else raw.strip()
    token = token or query.get("token") or None
    said = headers.get("protocol-version") or query.get("protocol-version")
    version = check_version(said) if said else None
    device = headers.get("device-id") or query.get("device-id") or query.get("device_id")
    client = headers.get("client-id") or query.get("client-id") or query.get("client_id")
    return Handshake(token, version, (device or "").strip() or None, (client or "").strip() or None)


def check_version(value: object) -> int:
    try:
        version = int(str(value).strip())
    except ValueError:
        version = -1
    if version not in VERSIONS:
        raise ApiError(400, "unsupported_protocol_version",
                       f"Protocol-Version must be 1, 2 or 3, not {value!r}")
    return version


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    mcp: bool
    uplink: AudioParams
    downlink: AudioParams


def parse_hello(message: dict[str, Any], said: int | None) -> Hello:
    """The device's hello; raises ApiError(422) for parameters the edge cannot serve."""
    transport = message.get("transport", "websocket")
    if transport != "websocket":
        raise ApiError(422, "bad_hello", f"transport must be 'websocket', not {transport!r}")
    version = said if said is not None else (
        check_version(message["version"]) if message.get("version") is not None else 1)
    features = message.get("features") or {}
    mcp = isinstance(features, dict) and bool(features.get("mcp"))
    uplink = audio_params(message.get("audio_params"), UPLINK, "audio_params")
    downlink = audio_params(message.get("downlink_audio_params"), DOWNLINK, "downlink_audio_params")
    return Hello(version, mcp, uplink, downlink)


def audio_params(value: object, default: AudioParams, field: str) -> AudioParams:
    if value is None:
        return default
    if not isinstance(value, dict):
        raise ApiError(422, "bad_hello", f"{field} must be an object")
    fmt = value.get("format", default.format)
    rate = value.get("sample_rate", default.sample_rate)
    channels = value.get("channels", default.channels)
    frame = value.get("frame_duration", default.frame_duration)
    if fmt != "opus":
        raise ApiError(422, "bad_hello", f"{field}.format must be 'opus', not {fmt!r}")
    if rate not in OPUS_RATES:
        raise ApiError(422, "bad_hello", f"{field}.sample_rate must be one of {sorted(OPUS_RATES)}")
    if channels != 1:
        raise ApiError(422, "bad_hello", f"{field}.channels must be 1")
    if frame not in OPUS_FRAME_MS:
        raise ApiError(422, "bad_hello", f"{field}.frame_duration must be one of {sorted(OPUS_FRAME_MS)}")
    return AudioParams(format="opus", sample_rate=rate, channels=1, frame_duration=frame)


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


def wake_words() -> tuple[str, ...]:
    extra = os.environ.get("VAGENT_XIAOZHI_WAKE_WORDS", "")
    return WAKE_WORDS + tuple(w.strip() for w in extra.split(",") if w.strip())


def after_wake_word(text: str, words: tuple[str, ...] | None = None) -> str | None:
    """The text after a leading wake word ("" for the wake word alone), or None when the
    text does not start with one."""
    for word in words or wake_words():
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
