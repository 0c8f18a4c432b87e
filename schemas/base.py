"""The envelope every event shares, and one base per aggregate kind.

Each concrete event is a tagged msgspec Struct: the tag (`type`) is its name in
DESIGN.md's vocabulary and also the last tokens of its subject.
"""

from __future__ import annotations

import re
import time
from typing import ClassVar

import msgspec

from schemas.ids import new_id

# A subject token: no dots, wildcards or white space (NATS would misroute them).
TOKEN_PATTERN = r"^[A-Za-z0-9_\-:@+=]{1,128}$"
_TOKEN = re.compile(TOKEN_PATTERN)


def is_token(value: str) -> bool:
    return bool(_TOKEN.match(value))


def check_token(kind: str, value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"invalid {kind} {value!r}: use 1-128 of A-Z a-z 0-9 _ - : @ + =")
    return value


class Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    id: str = msgspec.field(default_factory=new_id)
    ts: int = msgspec.field(default_factory=time.time_ns)
    v: int = 1
    causation_id: str | None = None

    # The aggregate kind: the second token of the subject (vagent.<kind>.<id>.evt.<type>).
    aggregate: ClassVar[str] = ""

    @property
    def type(self) -> str:
        return type(self).__struct_config__.tag  # type: ignore[return-value]  # msgspec types a tag str | int | None; an event's is its type name

    @property
    def aggregate_id(self) -> str:
        raise NotImplementedError


class SessionEvent(Event, kw_only=True):
    aggregate: ClassVar[str] = "session"
    session_id: str
    turn_id: str | None = None

    @property
    def aggregate_id(self) -> str:
        return self.session_id


class UserEvent(Event, kw_only=True):
    aggregate: ClassVar[str] = "user"
    user_id: str

    @property
    def aggregate_id(self) -> str:
        return self.user_id


class AssistantEvent(Event, kw_only=True):
    aggregate: ClassVar[str] = "assistant"
    assistant_id: str

    @property
    def aggregate_id(self) -> str:
        return self.assistant_id


class DocumentEvent(Event, kw_only=True):
    aggregate: ClassVar[str] = "doc"
    document_id: str

    @property
    def aggregate_id(self) -> str:
        return self.document_id
