"""/api/v1/sessions: a user's sessions after real typed sessions over /ws (the real dialogue
actor and an echoing LLM), their messages and turns with latencies; who sees what; pages;
every answer checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import pytest
import schemathesis
import websockets

from edge.app import OPENAPI_PATH
from schemas import SessionStarted, new_id
from tests.api_harness import Api
from tests.test_api_openapi import validate
from tests.test_ws import until, ws_url

Headers = dict[str, str]


@pytest.fixture(scope="module")
async def schema(stack: Api) -> Any:
    return schemathesis.openapi.from_dict((await stack.client.get(OPENAPI_PATH)).json())


async def talk(api: Api, headers: Headers | None, *texts: str) -> str:
    """A typed session over /ws (as the user of `headers`, or anonymous); its id once the
    last answer is in and the session has ended."""
    query = f"token={headers['Authorization'].split()[1]}" if headers else ""
    async with websockets.connect(ws_url(api, query)) as ws:
        session_id = json.loads(await ws.recv())["session_id"]
        for text in texts:
            await ws.send(json.dumps({"type": "user.text", "text": text}))
            # The answer to this input (its turn is named after it); an event the link
            # happened to forward twice is not it.
            asked = [m for m in await until(ws, "user.text") if m["type"] == "user.text"][-1]
            assert asked["text"] == text
            while True:
                answer = (await until(ws, "assistant.message"))[-1]
                if answer["turn_id"] == asked["id"]:
                    break
            assert answer["text"] == f"You said: {text}."
    return session_id


async def get(api: Api, schema: Any, path: str, headers: Headers, status: int = 200,
              **params: Any) -> Any:
    r = await api.client.get(path, headers=headers, params=params)
    assert r.status_code == status, (path, r.text)
    validate(schema, r)
    return r.json()


async def ended(api: Api, schema: Any, session_id: str, headers: Headers) -> dict[str, Any]:
    """The session once its end is in the read model (the edge records it on close)."""
    for _ in range(100):
        session = await get(api, schema, f"/api/v1/sessions/{session_id}", headers)
        if session["ended_at"]:
            return session
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} never ended: {session}")


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def walk(api: Api, path: str, headers: Headers, key: str, limit: int = 2,
               **query: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit, **query, **({"cursor": cursor} if cursor else {})}
        r = await api.client.get(path, headers=headers, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        ids += [item[key] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
        assert len(page["items"]) == limit
    raise AssertionError("the cursor never ended")


async def test_a_ws_session_shows_with_its_messages_and_turns(stack: Api, schema: Any) -> None:
    h = await stack.user()
    me = (await stack.client.get("/api/v1/me", headers=h)).json()
    sid = await talk(stack, h, "hello there", "how are you")
    session = await ended(stack, schema, sid, h)
    assert session["session_id"] == sid and session["transport"] == "ws"
    assert session["assistant_id"] == me["default_assistant_id"]
    assert session["turns"] == 2 and session["events"] > 6
    assert session["last_answer"] == "You said: how are you."
    assert session["end_reason"] and ts(session["started_at"]) <= ts(session["ended_at"])
    listed = await get(stack, schema, "/api/v1/sessions", h)
    assert [s["session_id"] for s in listed["items"]] == [sid] and listed["next_cursor"] is None
    assert listed["items"][0] == session

    messages = (await get(stack, schema, f"/api/v1/sessions/{sid}/messages", h))["items"]
    said = [(m["role"], m["text"]) for m in messages]
    assert said[-4:] == [("user", "hello there"), ("assistant", "You said: hello there."),
                         ("user", "how are you"), ("assistant", "You said: how are you.")]
    user_messages = [m for m in messages if m["role"] == "user"]
    answers = [m for m in messages if m["role"] == "assistant" and m["turn_id"] in
               {u["message_id"] for u in user_messages}]
    assert len(answers) == 2  # each answer names the input it answers as its turn

    turns = (await get(stack, schema, f"/api/v1/sessions/{sid}/turns", h))["items"]
    assert [t["input_text"] for t in turns] == ["hello there", "how are you"]
    assert [t["turn_id"] for t in turns] == [u["message_id"] for u in user_messages]
    for turn in turns:
        assert turn["input"] == "text" and turn["answer_text"] == f"You said: {turn['input_text']}."
        assert not turn["interrupted"] and turn["tool_calls"] == 0
        lat = turn["latencies"]
        # A typed turn: no speech, no transcript; no TTS runs here, so no audio either.
        assert lat["transcript_ms"] is None and lat["first_audio_ms"] is None
        assert turn["speech_stopped_at"] is None and turn["first_audio_at"] is None
        assert 0 <= lat["first_sentence_ms"] <= lat["answer_ms"] < 10_000
        assert lat["first_token_ms"] is not None and lat["first_token_ms"] >= 0
        assert ts(turn["started_at"]) <= ts(turn["first_sentence_at"]) <= ts(turn["answered_at"])


async def test_sessions_are_their_owners_alone(stack: Api, schema: Any) -> None:
    a, b = await stack.user(), await stack.user()
    sid = await talk(stack, a, "secret plans")
    anonymous = await talk(stack, None, "nobody's")
    await ended(stack, schema, sid, a)
    for path in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/messages",
                 f"/api/v1/sessions/{sid}/turns", f"/api/v1/sessions/{anonymous}",
                 f"/api/v1/sessions/{anonymous}/messages", f"/api/v1/sessions/{anonymous}/turns",
                 "/api/v1/sessions/NOSUCHSESSION", "/api/v1/sessions/*", "/api/v1/sessions/a.b/turns"):
        error = await get(stack, schema, path, b, status=404)
        assert error["error"]["code"] == "not_found"
    assert (await get(stack, schema, "/api/v1/sessions", b))["items"] == []
    assert [s["session_id"] for s in (await get(stack, schema, "/api/v1/sessions", a))["items"]] == [sid]
    r = await stack.client.get(f"/api/v1/sessions/{sid}")
    assert r.status_code == 401


async def test_sessions_messages_and_turns_come_a_page_at_a_time(stack: Api, schema: Any) -> None:
    h = await stack.user()
    sids = [await talk(stack, h, f"number {i}") for i in range(3)]
    assert await walk(stack, "/api/v1/sessions", h, "session_id") == sorted(sids)
    # Newest first (the web page's history), a page at a time too.
    assert await walk(stack, "/api/v1/sessions", h, "session_id", order="newest") == sorted(sids)[::-1]
    newest = await get(stack, schema, "/api/v1/sessions", h, order="newest", limit=1)
    assert [s["session_id"] for s in newest["items"]] == [max(sids)] and newest["next_cursor"]
    r = await stack.client.get("/api/v1/sessions", headers=h, params={"order": "random"})
    assert r.status_code == 422 and r.json()["error"]["details"] == {"at": "order"}, r.text
    sid = await talk(stack, h, "one", "two", "three")
    await ended(stack, schema, sid, h)
    everything = (await get(stack, schema, f"/api/v1/sessions/{sid}/messages", h, limit=100))["items"]
    assert len(everything) >= 6
    ids = await walk(stack, f"/api/v1/sessions/{sid}/messages", h, "message_id")
    assert ids == [m["message_id"] for m in everything]
    turns = await walk(stack, f"/api/v1/sessions/{sid}/turns", h, "turn_id")
    assert len(turns) == 3
    first = await get(stack, schema, f"/api/v1/sessions/{sid}/turns", h, limit=1)
    assert first["next_cursor"] and len(first["items"]) == 1
    # A cursor this API did not give (or from another list) is refused, not restarted.
    for cursor in ("bm90LWFuLWlk", "%%%"):
        r = await stack.client.get(f"/api/v1/sessions/{sid}/turns", headers=h, params={"cursor": cursor})
        assert r.status_code == 422 and r.json()["error"]["details"] == {"at": "cursor"}, r.text
    r = await stack.client.get("/api/v1/sessions", headers=h, params={"limit": 0})
    assert r.status_code == 422


async def test_a_session_nobody_owns_is_nobodys(stack: Api) -> None:
    """The per-user lookup is the only way in: even a valid session id of a session nobody
    owns (a `vagent say` one) answers 404."""
    sid = new_id()
    await stack.services.bus.publish(SessionStarted(session_id=sid))
    h = await stack.user()
    for path in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/turns"):
        assert (await stack.client.get(path, headers=h)).status_code == 404
