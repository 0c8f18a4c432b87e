"""The wire format: every event round-trips, old versions decode, bad bytes are named."""

from __future__ import annotations

import msgspec
import pytest

import schemas
from bus.subjects import subject_of
from schemas import AssistantMessage, DecodeError, UserText, decode, derived_id, encode

REQUIRED = {"session_id": "s1", "user_id": "u1", "assistant_id": "a1", "document_id": "d1",
            "text": "hi", "code": "x", "message": "m", "call_id": "c1", "name": "n",
            "content": "c", "email": "e@example.com", "device_id": "AA:BB", "reason": "r",
            "image": schemas.BlobRef(bucket="images", name="s1/p1", format="jpeg", sample_rate=0),
            "mime": "image/jpeg", "size": 3, "source": "ws", "role": "operator", "position": 1,
            "max_wait_ms": 10000, "queued_ms": 1200, "retry_after_s": 10}


def make(cls: type[schemas.Event]) -> schemas.Event:
    required = [f.name for f in msgspec.structs.fields(cls) if f.required]
    return cls(**{name: REQUIRED[name] for name in required})


@pytest.mark.parametrize("cls", schemas.ALL_EVENTS, ids=lambda c: c.__struct_config__.tag)
def test_every_event_round_trips_msgpack_and_json(cls: type[schemas.Event]) -> None:
    event = make(cls)
    assert decode(encode(event)) == event
    assert schemas.from_json(schemas.to_json(event)) == event
    assert schemas.to_builtins(event)["type"] == cls.__struct_config__.tag
    assert subject_of(event) == f"vagent.{event.aggregate}.{event.aggregate_id}.evt.{event.type}"


def test_vocabulary_covers_design() -> None:
    design = {"session.started", "session.ended", "listen.started", "listen.stopped",
              "speech.started", "speech.stopped", "transcript.partial", "transcript.final",
              "user.text", "turn.started", "assistant.delta", "assistant.sentence",
              "assistant.message", "tool.call", "tool.result", "tts.started", "tts.sentence",
              "tts.stopped", "turn.interrupted", "error"}
    assert design <= set(schemas.EVENT_TYPES)


def test_assistant_message_v1_still_decodes() -> None:
    # v1 stored token counts flat; v2 groups them in `usage`.
    v1 = msgspec.msgpack.encode({
        "type": "assistant.message", "id": "01JZZZZZZZZZZZZZZZZZZZZZZZ", "ts": 1, "v": 1,
        "session_id": "s1", "text": "hello", "prompt_tokens": 12, "completion_tokens": 3,
    })
    event = decode(v1)
    assert isinstance(event, AssistantMessage)
    assert event.v == 2
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (12, 3)
    assert event.text == "hello"
    assert decode(encode(event)) == event


def test_additive_fields_decode_from_older_producers() -> None:
    # A producer that predates `source` still yields a valid event with the default.
    old = msgspec.msgpack.encode({"type": "user.text", "id": "X", "ts": 1, "session_id": "s1",
                                  "text": "hey"})
    assert decode(old) == UserText(id="X", ts=1, session_id="s1", text="hey", source="text")


@pytest.mark.parametrize(("data", "message"), [
    (b"\xc1", "not an event"),
    (msgspec.msgpack.encode([1, 2]), "expected a map"),
    (msgspec.msgpack.encode({"type": "no.such"}), "unknown event type 'no.such'"),
    (msgspec.msgpack.encode({"type": "user.text", "text": "x"}), "session_id"),
    (msgspec.msgpack.encode({"type": "user.text", "session_id": "s", "text": 5}), "Expected `str`"),
])
def test_bad_bytes_raise_a_precise_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def test_ids_are_sortable_and_derived_ids_are_stable() -> None:
    first, second = schemas.new_id(), schemas.new_id()
    assert len(first) == 26 and first[:8] <= second[:8]
    assert derived_id(first, "dialogue", 0) == derived_id(first, "dialogue", 0)
    assert derived_id(first, "dialogue", 0) != derived_id(first, "dialogue", 1)
    assert derived_id(first, "dialogue", 0) != derived_id(first, "tts", 0)
    assert derived_id(first, "dialogue", 0)[:10] == first[:10]  # sorts next to its cause


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", "", "x" * 200])
def test_ids_that_would_break_subjects_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid session id"):
        subject_of(UserText(session_id=bad, text="x"))


def test_the_assistant_events_carry_the_declared_settings() -> None:
    """AssistantSettings declares an assistant's settings; the events must say the same
    (an update's None means unchanged, so its every setting is optional)."""
    settings = {f.name: f for f in msgspec.structs.fields(schemas.AssistantSettings)}
    created = {f.name: f for f in msgspec.structs.fields(schemas.AssistantCreated)}
    updated = {f.name: f for f in msgspec.structs.fields(schemas.AssistantUpdated)}
    every_event = set(schemas.AssistantDeleted.__struct_fields__)
    assert set(settings) == set(updated) - every_event == set(created) - every_event - {"owner_id"}
    for name, setting in settings.items():
        assert (created[name].type, created[name].default) == (setting.type, setting.default), name
        assert updated[name].type in (setting.type, setting.type | None), name
        assert updated[name].default is None, name
