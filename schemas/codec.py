"""The wire format: msgpack for the bus, JSON for clients, with upgrades of old versions.

Adding a field with a default is backward compatible by itself. A change that is
not (a rename, a regrouping) bumps the event's `v` and registers an upgrader
from the old shape here, so every stored version keeps decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import msgspec

from schemas.account import ACCOUNT_EVENTS
from schemas.base import Event
from schemas.session import SESSION_EVENTS

ALL_EVENTS: tuple[type[Event], ...] = SESSION_EVENTS + ACCOUNT_EVENTS
AnyEvent = Union[ALL_EVENTS]  # type: ignore[valid-type]  # noqa: UP007  # a union of a runtime tuple of classes, for msgspec
EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls for cls in ALL_EVENTS  # type: ignore[misc]  # msgspec types a tag str | int | None; an event's is its type name
}


class DecodeError(ValueError):
    """Bytes that are not a known vagent event."""


Upgrader = Callable[[dict[str, Any]], dict[str, Any]]
# (type, version it upgrades from) -> function returning the next version's fields.
UPGRADES: dict[tuple[str, int], Upgrader] = {}


def upgrader(event_type: str, from_version: int) -> Callable[[Upgrader], Upgrader]:
    def register(fn: Upgrader) -> Upgrader:
        UPGRADES[(event_type, from_version)] = fn
        return fn

    return register


@upgrader("assistant.message", 1)
def _assistant_message_v1(fields: dict[str, Any]) -> dict[str, Any]:
    fields["usage"] = {
        "prompt_tokens": fields.pop("prompt_tokens", 0),
        "completion_tokens": fields.pop("completion_tokens", 0),
    }
    fields["v"] = 2
    return fields


_UPGRADED_TYPES = {t for t, _ in UPGRADES}
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(AnyEvent)
_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(AnyEvent)


def _current_version(cls: type[Event]) -> int:
    return cls.__struct_defaults__[cls.__struct_fields__.index("v")]


def _upgrade(fields: dict[str, Any]) -> Event:
    event_type = fields.get("type")
    if not isinstance(event_type, str) or EVENT_TYPES.get(event_type) is None:
        raise DecodeError(f"unknown event type {event_type!r}")
    version = fields.get("v", 1)
    while (event_type, version) in UPGRADES:
        fields = UPGRADES[(event_type, version)](fields)
        version = fields.get("v", version + 1)
    try:
        return msgspec.convert(fields, AnyEvent)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid {event_type} v{version}: {exc}") from exc


def _decode(data: bytes, decoder: Any, raw: Callable[[bytes], Any]) -> Event:
    try:
        event = decoder.decode(data)
    except msgspec.ValidationError:
        # Maybe an older shape that needs upgrading; otherwise really invalid.
        fields = _raw(data, raw)
        if isinstance(fields, dict) and fields.get("type") in _UPGRADED_TYPES:
            return _upgrade(fields)
        raise DecodeError(_describe(fields)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not an event: {exc}") from None
    if event.type in _UPGRADED_TYPES and event.v < _current_version(type(event)):
        return _upgrade(_raw(data, raw))
    return event


def _raw(data: bytes, raw: Callable[[bytes], Any]) -> Any:
    try:
        return raw(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not an event: {exc}") from None


def _describe(fields: Any) -> str:
    if not isinstance(fields, dict):
        return f"not an event: expected a map, got {type(fields).__name__}"
    event_type = fields.get("type")
    if event_type not in EVENT_TYPES:
        return f"unknown event type {event_type!r}"
    try:
        msgspec.convert(fields, AnyEvent)
    except msgspec.ValidationError as exc:
        return f"invalid {event_type}: {exc}"
    return f"invalid {event_type}"


def encode(event: Event) -> bytes:
    return _msgpack_encoder.encode(event)


def decode(data: bytes) -> Event:
    return _decode(data, _msgpack_decoder, msgspec.msgpack.decode)


def to_json(event: Event) -> bytes:
    return _json_encoder.encode(event)


def from_json(data: bytes | str) -> Event:
    return _decode(data if isinstance(data, bytes) else data.encode(), _json_decoder,
                   msgspec.json.decode)


def to_builtins(event: Event) -> dict[str, Any]:
    """A plain dict with `type` first, for JSON output and display."""
    fields = msgspec.to_builtins(event)
    return {"type": fields.pop("type"), **fields}
