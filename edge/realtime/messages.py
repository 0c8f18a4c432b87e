"""What `/ws` clients and WebRTC data channels may send, as Structs decoded strictly (see
edge/jsonparse.py), and the checks every typed text gets before it becomes `user.text`."""

from __future__ import annotations

from typing import Literal

import msgspec

from edge.errors import ApiError

ListenMode = Literal["auto", "manual", "realtime"]


class UserTextMessage(msgspec.Struct):
    text: str


class ListenStartMessage(msgspec.Struct):
    mode: ListenMode = "auto"


class Bare(msgspec.Struct):
    """A message that is only its type (abort, listen.stop, hangup)."""


CLIENT_MESSAGES: dict[str, type[msgspec.Struct]] = {
    "user.text": UserTextMessage, "abort": Bare, "listen.start": ListenStartMessage,
    "listen.stop": Bare,
}


def checked_text(text: str, limit: int, what: str = "user.text") -> str:
    """`text` if a turn can be made of it: not blank, and at most `limit` characters
    (`edge.max_text_chars`: a prompt the model, the log and the read models can carry)."""
    if not text.strip():
        raise ApiError(422, "bad_message", f"{what} needs a non-empty text", {"at": "$.text"})
    if len(text) > limit:
        raise ApiError(422, "text_too_long",
                       f"{what} is limited to {limit} characters, this one has {len(text)}",
                       {"at": "$.text", "limit": limit})
    return text
