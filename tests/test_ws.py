"""`/ws`: a text session over a real WebSocket, through the real dialogue actor."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from bus.log import load
from tests.api_harness import Api


def ws_url(api: Api, query: str = "") -> str:
    return api.edge.url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


async def until(ws: Any, kind: str, timeout: float = 20) -> list[dict[str, Any]]:
    """Messages up to and including the first of type `kind`."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if message["type"] == kind:
                return seen


async def test_a_typed_turn_streams_events_back(stack: Api) -> None:
    async with websockets.connect(ws_url(stack)) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "session" and not hello["resumed"]
        await ws.send(json.dumps({"type": "user.text", "text": "hello there"}))
        seen = await until(ws, "assistant.message")
        types = [m["type"] for m in seen]
        assert "session.started" in types and "user.text" in types and "assistant.delta" in types
        assert seen[-1]["text"] == "You said: hello there."
    entries, _ = await load(stack.services.bus, "session", hello["session_id"])
    await asyncio.sleep(0.2)
    entries, _ = await load(stack.services.bus, "session", hello["session_id"])
    assert entries[-1].event is not None and entries[-1].event.type == "session.ended"


async def test_a_signed_in_user_talks_to_their_assistant_and_resumes(stack: Api) -> None:
    headers = await stack.user()
    token = headers["Authorization"].split()[1]
    async with websockets.connect(ws_url(stack, f"token={token}&echo_cancelled=true")) as ws:
        sid = json.loads(await ws.recv())["session_id"]
        started = (await until(ws, "session.started"))[-1]
        assert started["user_id"] and started["assistant_id"] and started["transport"] == "ws"
        assert started["echo_cancelled"] is True  # the client's word: its echo is not the ASR's
    async with websockets.connect(ws_url(stack, f"token={token}&session_id={sid}")) as ws:
        hello = json.loads(await ws.recv())
        assert hello == {"type": "session", "session_id": sid, "resumed": True}
    # Another user cannot take it over.
    other = (await stack.user())["Authorization"].split()[1]
    async with websockets.connect(ws_url(stack, f"token={other}&session_id={sid}")) as ws:
        error = json.loads(await ws.recv())
        assert error["code"] == "session_not_found"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_bad_input_gets_a_precise_error_and_the_session_goes_on(stack: Api) -> None:
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.recv()
        await ws.send("{not json")
        assert (await until(ws, "error"))[-1]["code"] == "bad_message"
        await ws.send(json.dumps({"type": "dance"}))
        assert (await until(ws, "error"))[-1]["code"] == "unknown_type"
        await ws.send(b"\x00\x01")
        assert (await until(ws, "error"))[-1]["code"] == "audio_not_negotiated"
        await ws.send(json.dumps({"type": "user.text", "text": "still here"}))
        assert (await until(ws, "assistant.message"))[-1]["text"] == "You said: still here."


async def test_invalid_tokens_and_oversized_frames_close_with_a_reason(stack: Api) -> None:
    async with websockets.connect(ws_url(stack, "token=nonsense")) as ws:
        assert json.loads(await ws.recv())["code"] == "token_invalid"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    async with websockets.connect(ws_url(stack, "echo_cancelled=maybe")) as ws:
        refused = json.loads(await ws.recv())
        assert refused["code"] == "validation_failed" and "echo_cancelled" in refused["message"]
    async with websockets.connect(ws_url(stack), max_size=None) as ws:
        await ws.recv()
        await ws.send("x" * (stack.services.config.edge.max_frame_bytes + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_health_and_readiness(stack: Api) -> None:
    r = await stack.client.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True
    r = await stack.client.get("/readyz")
    # Only the dialogue and tools actors run here: not ready, and it says what is missing.
    assert r.status_code == 503 and "asr" in r.json()["missing"] and r.json()["nats"] is True
