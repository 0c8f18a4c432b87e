"""Photos: a xiaozhi device's camera posting to the vision URL its MCP `initialize` named,
described by `[vision]`'s model (the echo server, through the real openai SDK)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from bus.blobs import get_blob
from bus.log import load
from bus.server import EmbeddedServer
from devservers.echo_llm import OpenAIServer
from replay.engine import replay_session
from schemas import Event, UserImage, new_id
from settings.config import Config, VisionSettings
from tests.api_harness import Api, api_config
from tests.procs import vagent
from tests.test_ws import until
from tests.xiaozhi_client import XiaozhiDevice

# Both the dialogue's LLM and the vision model: its port is known before the stack starts.
SERVER = OpenAIServer()
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
# Above `[edge] max_frame_bytes`: a phone photo sent on /ws is larger than one frame.
MAX_IMAGE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def llm() -> Iterator[OpenAIServer]:
    SERVER.start()
    yield SERVER
    SERVER.stop()


def with_vision(config: Config) -> Config:
    config.vision = VisionSettings(base_url=SERVER.base_url, model="see-1", max_image_bytes=MAX_IMAGE)
    return config


pytestmark = pytest.mark.stack("dialogue", settings=with_vision)


def mac() -> str:
    raw = new_id().encode().hex()[-12:].upper()
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


async def log_of(api: Api, sid: str) -> list[Event]:
    entries, _ = await load(api.services.bus, "session", sid)
    return [e.event for e in entries if e.event is not None]


async def device_vision(api: Api) -> tuple[XiaozhiDevice, dict[str, str]]:
    """A connected device with MCP, and the vision {url, token} its initialize carried."""
    device = await XiaozhiDevice(api.edge.url.replace("http://", "ws://") + "/xiaozhi/v1/",
                                 device_id=mac()).connect()
    await device.hello(mcp=True)
    await device.wait_for(lambda r: bool(device.mcp_log), timeout=10)
    initialize = device.mcp_log[0]
    assert initialize["method"] == "initialize"
    return device, initialize["params"]["capabilities"]["vision"]


async def post_photo(device: XiaozhiDevice, vision: dict[str, str], photo: bytes, *,
                     token: str | None = None, question: str = "what is on the table?",
                     mime: str = "image/jpeg") -> httpx.Response:
    """As the firmware's camera posts: multipart `question` + `file`, bearer token, ids."""
    headers = {"Authorization": f"Bearer {token or vision['token']}", "Device-Id": device.device_id,
               "Client-Id": device.client_id}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(vision["url"], headers=headers, data={"question": question},
                                 files={"file": ("camera.jpg", photo, mime)})


async def test_device_photo_is_stored_logged_and_described(stack: Api) -> None:
    device, vision = await device_vision(stack)
    try:
        assert vision["url"] == stack.edge.url + "/xiaozhi/vision/explain"
        before = len(SERVER.requests)
        r = await post_photo(device, vision, JPEG)
        assert r.status_code == 200, r.text
        assert r.json() == {"success": True, "action": "RESPONSE",
                            "response": "You showed a image/jpeg image and said: what is on the table?."}
        request: dict[str, Any] = SERVER.requests[before]
        assert request["model"] == "see-1"
        parts = request["messages"][-1]["content"]
        image = next(p for p in parts if p["type"] == "image_url")["image_url"]["url"]
        assert image == "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
        events = await log_of(stack, device.session_id)
        photo = next(e for e in events if isinstance(e, UserImage))
        assert (photo.mime, photo.size, photo.question, photo.source) == (
            "image/jpeg", len(JPEG), "what is on the table?", "device")
        assert await get_blob(stack.services.bus, photo.image) == JPEG
    finally:
        await device.close()


async def test_device_photo_refusals(stack: Api) -> None:
    device, vision = await device_vision(stack)
    try:
        before = len(SERVER.requests)
        r = await post_photo(device, vision, b"GIF89a" + b"\x00" * 64, mime="image/jpeg")
        assert (r.status_code, r.json()["error"]["code"]) == (415, "not_an_image")
        r = await post_photo(device, vision, PNG[:8] + b"\x00" * MAX_IMAGE)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
        r = await post_photo(device, vision, PNG, token=vision["token"][:-4] + "AAAA")
        assert r.status_code == 401
        other, other_vision = await device_vision(stack)
        try:  # another device's token names another session
            r = await post_photo(device, vision, PNG, token=other_vision["token"])
            assert (r.status_code, r.json()["error"]["code"]) == (401, "token_invalid")
        finally:
            await other.close()
        expired = stack.services.tokens.vision_token(device.session_id, device.device_id, -5)
        r = await post_photo(device, vision, PNG, token=expired)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_expired")
        assert len(SERVER.requests) == before  # nothing refused reached the model
        assert not [e for e in await log_of(stack, device.session_id) if isinstance(e, UserImage)]
    finally:
        await device.close()


async def test_a_failing_vision_model_is_a_clear_error(stack: Api) -> None:
    device, vision = await device_vision(stack)
    SERVER.fail_status, SERVER.fail_times = 500, 1
    try:
        r = await post_photo(device, vision, JPEG)
        assert (r.status_code, r.json()["error"]["code"]) == (503, "vision_failed")
        r = await post_photo(device, vision, JPEG)  # the model is back
        assert r.status_code == 200 and r.json()["success"] is True
    finally:
        SERVER.fail_status = SERVER.fail_times = None
        await device.close()


async def test_without_a_vision_model_photos_are_refused_clearly(stack: Api) -> None:
    device, vision = await device_vision(stack)
    config = stack.services.config
    saved = config.vision
    config.vision = msgspec.structs.replace(saved, base_url="")
    try:
        r = await post_photo(device, vision, JPEG)
        assert (r.status_code, r.json()["error"]["code"]) == (503, "vision_not_configured")
    finally:
        config.vision = saved
        await device.close()


def ws_url(api: Api) -> str:
    return api.edge.url.replace("http://", "ws://") + "/ws"


async def test_a_ws_photo_is_described_and_answered_as_a_turn(stack: Api, module_nats: EmbeddedServer
                                                            ) -> None:
    async with websockets.connect(ws_url(stack)) as ws:
        sid = json.loads(await ws.recv())["session_id"]
        before = len(SERVER.requests)
        await ws.send(json.dumps({"type": "user.image", "image": base64.b64encode(PNG).decode(),
                                  "text": "which colour is it?"}))
        seen = await until(ws, "assistant.message")
        photo = next(m for m in seen if m["type"] == "user.image")
        assert (photo["mime"], photo["size"], photo["question"], photo["source"]) == (
            "image/png", len(PNG), "which colour is it?", "ws")
        described = "You showed a image/png image and said: which colour is it?."
        typed = next(m for m in seen if m["type"] == "user.text")
        assert typed["source"] == "image" and described in typed["text"]
        # The vision model saw the photo; the dialogue's LLM answered its description.
        vision_request = SERVER.requests[before]
        assert vision_request["model"] == "see-1"
        image = next(p for p in vision_request["messages"][-1]["content"]
                     if p["type"] == "image_url")["image_url"]["url"]
        assert image == "data:image/png;base64," + base64.b64encode(PNG).decode()
        assert described in seen[-1]["text"]
    events = await log_of(stack, sid)
    logged = next(e for e in events if isinstance(e, UserImage))
    assert await get_blob(stack.services.bus, logged.image) == PNG
    shown = await asyncio.to_thread(vagent, "session", "show", sid, "--wide", "--nats", module_nats.url)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if " user.image " in line)
    assert f"image=images/{sid}/{logged.id}" in line and "mime=image/png" in line
    assert "question=which colour is it?" in line and "source=ws" in line
    assert "turn 1 (photo): 'which colour is it?" in shown.stdout

    # The replay stores the photo again and has today's vision model describe it again.
    before = len(SERVER.requests)
    report = await replay_session(stack.services.bus, sid, config=with_vision(api_config()),
                                  llm_base_url=SERVER.base_url, tts=False, timeout=60)
    (turn,) = report.turns
    assert turn.note is None and turn.replay.transcript == turn.original.transcript
    assert described in (turn.replay.answer or "")
    assert any(p.get("type") == "image_url" for r in SERVER.requests[before:]
               for p in r["messages"][-1]["content"] if isinstance(r["messages"][-1]["content"], list))


async def test_ws_photo_refusals_leave_the_session_going(stack: Api) -> None:
    async with websockets.connect(ws_url(stack)) as ws:
        sid = json.loads(await ws.recv())["session_id"]

        async def refused(message: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps({"type": "user.image", **message}))
            return (await until(ws, "error"))[-1]

        assert (await refused({"image": base64.b64encode(b"%PDF-1.7 " * 8).decode()}))["code"] == \
            "not_an_image"
        assert (await refused({"image": "not base64!"}))["code"] == "bad_message"
        config = stack.services.config
        saved = config.vision
        config.vision = msgspec.structs.replace(saved, max_image_bytes=len(PNG) - 1)
        try:
            assert (await refused({"image": base64.b64encode(PNG).decode()}))["code"] == "image_too_large"
            config.vision = msgspec.structs.replace(saved, base_url="")
            assert (await refused({"image": base64.b64encode(PNG).decode()}))["code"] == \
                "vision_not_configured"
        finally:
            config.vision = saved
        await ws.send(json.dumps({"type": "user.text", "text": "still there?"}))
        assert (await until(ws, "assistant.message"))[-1]["text"] == "You said: still there?."
    assert not [e for e in await log_of(stack, sid) if isinstance(e, UserImage)]


async def test_a_ws_photo_may_exceed_the_frame_limit_and_nothing_else_may(stack: Api) -> None:
    # Random bytes after JPEG's magic: the edge checks a photo by its first bytes only.
    photo = JPEG[:4] + os.urandom(1_000_000)
    async with websockets.connect(ws_url(stack), max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "user.image", "image": base64.b64encode(photo).decode(),
                                  "text": "a big one?"}))
        seen = await until(ws, "assistant.message")
        assert next(m for m in seen if m["type"] == "user.image")["size"] == len(photo)
        assert "You showed a image/jpeg image and said: a big one?." in seen[-1]["text"]

        # Over [vision] max_image_bytes: refused with a reason, and the session goes on.
        large = JPEG[:4] + bytes(MAX_IMAGE)
        await ws.send(json.dumps({"type": "user.image", "image": base64.b64encode(large).decode()}))
        error = (await until(ws, "error"))[-1]
        assert (error["code"], error["details"]["limit"]) == ("image_too_large", MAX_IMAGE)
        await ws.send(json.dumps({"type": "user.text", "text": "still there?"}))
        assert (await until(ws, "assistant.message"))[-1]["text"] == "You said: still there?."

        # Any other message keeps the frame limit.
        limit = stack.services.config.edge.max_frame_bytes
        await ws.send(json.dumps({"type": "user.text", "text": "x" * (limit + 6000)}))
        assert (await until(ws, "error"))[-1]["code"] == "frame_too_large"
        await ws.wait_closed()
        assert ws.close_code == 1009

    # So does a photo while no vision model is configured.
    config = stack.services.config
    saved = config.vision
    config.vision = msgspec.structs.replace(saved, base_url="")
    try:
        async with websockets.connect(ws_url(stack), max_size=None) as ws:
            await ws.recv()
            image = base64.b64encode(photo[:60_000]).decode()
            await ws.send(json.dumps({"type": "user.image", "image": image}))
            assert (await until(ws, "error"))[-1]["code"] == "frame_too_large"
            await ws.wait_closed()
            assert ws.close_code == 1009
    finally:
        config.vision = saved
