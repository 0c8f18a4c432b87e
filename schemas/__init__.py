"""Every vagent event as a versioned msgspec Struct: the wire format."""

from schemas.account import *  # noqa: F403
from schemas.base import (
    TOKEN_PATTERN,
    AssistantEvent,
    DocumentEvent,
    Event,
    SessionEvent,
    UserEvent,
    check_token,
    is_token,
)
from schemas.codec import (
    ALL_EVENTS,
    EVENT_TYPES,
    AnyEvent,
    DecodeError,
    decode,
    encode,
    from_json,
    to_builtins,
    to_json,
)
from schemas.ids import derived_id, new_id
from schemas.session import *  # noqa: F403

__all__ = [
    "ALL_EVENTS",
    "EVENT_TYPES",
    "TOKEN_PATTERN",
    "AnyEvent",
    "AssistantEvent",
    "DecodeError",
    "DocumentEvent",
    "Event",
    "SessionEvent",
    "UserEvent",
    "check_token",
    "decode",
    "derived_id",
    "encode",
    "from_json",
    "is_token",
    "new_id",
    "to_builtins",
    "to_json",
]
