"""A stock xiaozhi device's first boot against the live edge: the OTA check, activation by
code, the owner's binding, the WebSocket with the device token and a spoken turn; the
handshake's placeholder tokens; idle devices. The device side is spoken as the firmware
does (its OTA headers and system-info body, tests/xiaozhi_client.py for the WebSocket)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Any

import httpx
import msgspec
import pytest
import websockets

from settings.config import Config, XiaozhiConfig
from tests.api_harness import Api
from tests.fixtures.audio import has_key_words, opus_packets, pcm
from tests.test_api_resources import create, error_code
from tests.test_xiaozhi import mac, until_logged, url
from tests.xiaozhi_client import XiaozhiDevice

IDLE_S = 8.0
SERIAL = "SN-VAGENT-TEST-000000000000001"
KEY = bytes(range(32))  # the device's efuse HMAC key, as an operator configures it


def short_idle_and_a_device_key(config: Config) -> Config:
    config.edge = msgspec.structs.replace(config.edge, idle_timeout=IDLE_S,
                                          xiaozhi=XiaozhiConfig(hmac_keys={SERIAL: KEY.hex()}))
    return config


pytestmark = pytest.mark.stack("asr", "dialogue", "tts", settings=short_idle_and_a_device_key)


class Device:
    """A device's HTTP side as the firmware speaks it (its ota.cc): the OTA check with its
    headers and system information, and the activation poll."""

    def __init__(self, api: Api, *, version: str = "1.9.2", board: str = "bread-compact-wifi",
                 serial: str | None = None, ota_url: str | None = None) -> None:
        self.api = api
        self.device_id = mac()
        self.client_id = str(uuid.uuid4())
        self.version = version
        self.board = board
        self.serial = serial
        self.ota_url = ota_url or "/xiaozhi/ota/"
        self.challenge = ""

    def headers(self) -> dict[str, str]:
        headers = {"Activation-Version": "2" if self.serial else "1", "Device-Id": self.device_id,
                   "Client-Id": self.client_id, "User-Agent": f"bread-compact-wifi/{self.version}",
                   "Accept-Language": "en-US", "Content-Type": "application/json"}
        if self.serial:
            headers["Serial-Number"] = self.serial
        return headers

    def system_info(self) -> str:
        return json.dumps({
            "version": 2, "language": "en-US", "flash_size": 16777216,
            "minimum_free_heap_size": "8342332", "mac_address": self.device_id.lower(),
            "uuid": self.client_id, "chip_model_name": "esp32s3",
            "chip_info": {"model": 9, "cores": 2, "revision": 2, "features": 18},
            "application": {"name": "xiaozhi", "version": self.version,
                            "compile_time": "Aug  8 2026T08:33:45Z", "idf_version": "v5.4.1",
                            "elf_sha256": "ab" * 32},
            "partition_table": [{"label": "nvs", "type": 1, "subtype": 2, "address": 36864,
                                 "size": 16384}],
            "ota": {"label": "ota_0"}, "display": {"monochrome": False, "width": 240, "height": 240},
            "board": {"type": self.board, "name": "bread-compact-wifi", "ssid": "home", "rssi": -50,
                      "channel": 6, "ip": "192.168.1.20", "mac": self.device_id.lower()}},
            separators=(",", ":"))

    async def check(self, status: int = 200) -> dict[str, Any]:
        r = await self.api.client.post(self.ota_url, headers=self.headers(), content=self.system_info())
        assert r.status_code == status, r.text
        answer: dict[str, Any] = r.json()
        if "activation" in answer:
            self.challenge = answer["activation"]["challenge"]
        return answer

    def payload(self, challenge: str | None = None, key: bytes = KEY) -> str:
        if not self.serial:
            return "{}"
        challenge = self.challenge if challenge is None else challenge
        return json.dumps({"algorithm": "hmac-sha256", "serial_number": self.serial,
                           "challenge": challenge,
                           "hmac": hmac.new(key, challenge.encode(), hashlib.sha256).hexdigest()})

    async def activate(self, payload: str | None = None) -> httpx.Response:
        return await self.api.client.post("/xiaozhi/ota/activate", headers=self.headers(),
                                          content=self.payload() if payload is None else payload)


async def bind(api: Api, code: str) -> tuple[dict[str, str], str, httpx.Response]:
    """A new owner binds `code` to their new assistant: (their headers, the assistant, the answer)."""
    h = await api.user()
    aid = (await create(api, h))["assistant_id"]
    r = await api.client.post("/api/v1/devices", headers=h, json={"code": code, "assistant_id": aid})
    return h, aid, r


# --- the first boot ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_first_boot_from_ota_to_a_spoken_answer(stack: Api) -> None:
    device = Device(stack)
    before = time.time() * 1000
    first = await device.check()
    assert set(first) == {"server_time", "firmware", "websocket", "activation"}, first
    assert before - 60_000 < first["server_time"]["timestamp"] < time.time() * 1000 + 60_000
    assert isinstance(first["server_time"]["timezone_offset"], int)
    assert first["firmware"] == {"version": "1.9.2", "url": ""}  # nothing newer offered
    assert first["websocket"] == {"url": url(stack), "token": ""}
    activation = first["activation"]
    assert re.fullmatch(r"\d{6}", activation["code"]) and activation["code"] in activation["message"]
    assert len(activation["challenge"]) >= 16 and activation["timeout_ms"] > 0

    # Asked again (GET, no trailing slash): the same code and challenge while it waits.
    r = await stack.client.get("/xiaozhi/ota", headers=device.headers())
    assert r.status_code == 200, r.text
    assert r.json()["activation"]["code"] == activation["code"]
    assert r.json()["activation"]["challenge"] == activation["challenge"]
    # The same code the API hands out for this device: one implementation.
    r = await stack.client.post("/api/v1/devices/activation",
                                json={"device_id": device.device_id, "client_id": device.client_id})
    assert r.status_code == 200 and r.json()["code"] == activation["code"], r.text

    r = await device.activate()
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text

    _, aid, r = await bind(stack, activation["code"])
    assert r.status_code == 201, r.text
    r = await device.activate()
    assert r.status_code == 200 and r.json()["status"] == "bound", r.text
    r = await device.activate()  # the same poll again: spent
    assert r.status_code == 409 and error_code(r) == "challenge_used", r.text

    bound = await device.check()
    assert "activation" not in bound and bound["websocket"]["url"] == url(stack)
    token = bound["websocket"]["token"]
    grant = await stack.services.tokens.verify_device(token, device.device_id)
    assert grant.assistant_id == aid

    # Another client with this MAC gets neither a code nor a token, and still the settings
    # (an error would leave the firmware without a WebSocket).
    impostor = Device(stack)
    impostor.device_id = device.device_id
    answer = await impostor.check()
    assert "activation" not in answer and answer["websocket"] == {"url": url(stack)}, answer

    # The firmware connects with what it was told: the URL, Bearer <token>, its ids.
    async with XiaozhiDevice(bound["websocket"]["url"], device_id=device.device_id,
                             client_id=device.client_id, token=token) as ws:
        await ws.hello()
        await ws.listen("start", "auto")
        await ws.send_audio(opus_packets(pcm("what_time"), 16000, 60))
        await ws.wait_json("tts", state="stop", timeout=60)
        stt = ws.messages("stt")[0]["text"]
        assert has_key_words("what_time", stt), stt
        assert ws.audio(), "no downlink audio"
        sid = ws.session_id
    started = (await until_logged(stack, sid, "session.started"))[0]
    assert (started.user_id, started.assistant_id) == (grant.user_id, aid)  # type: ignore[attr-defined]


async def test_a_device_key_signs_the_activation(stack: Api) -> None:
    device = Device(stack, serial=SERIAL)
    code = (await device.check())["activation"]["code"]
    r = await device.activate(device.payload(key=bytes(32)))  # signed with another key
    assert r.status_code == 401 and error_code(r) == "hmac_invalid", r.text
    r = await device.activate(json.dumps({"algorithm": "hmac-sha256", "serial_number": SERIAL,
                                          "challenge": device.challenge, "hmac": ""}))
    assert r.status_code == 401 and error_code(r) == "hmac_invalid", r.text
    r = await device.activate(json.dumps({"algorithm": "hmac-sha256", "serial_number": "SN-ANOTHER",
                                          "challenge": device.challenge, "hmac": ""}))
    assert r.status_code == 400 and error_code(r) == "serial_number_mismatch", r.text
    r = await device.activate()
    assert r.status_code == 202, r.text
    # The message is in the device's language where vagent speaks it.
    r = await stack.client.get("/xiaozhi/ota/", headers={**device.headers(), "Accept-Language": "zh-CN"})
    assert r.json()["activation"]["message"] == f"请在 vagent 中用验证码 {code} 绑定此设备", r.text

    # Another device's challenge, its own ids: not this device's poll.
    other = Device(stack, serial=SERIAL)
    await other.check()
    r = await other.activate(other.payload(challenge=device.challenge))
    assert r.status_code == 409 and error_code(r) == "challenge_mismatch", r.text

    assert (await bind(stack, code))[2].status_code == 201
    r = await device.activate()
    assert r.status_code == 200, r.text
    r = await device.activate()  # replayed
    assert r.status_code == 409 and error_code(r) == "challenge_used", r.text
    assert (await device.check())["websocket"]["token"]


# --- bad input -----------------------------------------------------------------------------------


async def test_the_ota_check_refuses_bad_requests(stack: Api) -> None:
    c, device = stack.client, Device(stack)
    headers = device.headers()
    del headers["Device-Id"]
    for method in ("GET", "POST"):
        r = await c.request(method, "/xiaozhi/ota/", headers=headers, content=device.system_info()
                            if method == "POST" else None)
        assert r.status_code == 400 and r.json()["error"]["code"] == "device_id_missing", r.text
        assert set(r.json()["error"]) == {"code", "message", "details"}
    for bad in ("not a mac!", "x" * 200):
        r = await c.post("/xiaozhi/ota/", headers={**headers, "Device-Id": bad}, content="{}")
        assert r.status_code == 400 and error_code(r) == "invalid_device_id", r.text
    r = await c.post("/xiaozhi/ota/", headers={**device.headers(), "Client-Id": ""}, content="{}")
    assert r.status_code == 400 and error_code(r) == "client_id_missing", r.text

    r = await c.post("/xiaozhi/ota/", headers=device.headers(), content='{"application": {')
    assert r.status_code == 400 and error_code(r) == "malformed_json", r.text
    r = await c.post("/xiaozhi/ota/", headers=device.headers(), content="[" * 100 + "]" * 100)
    assert r.status_code == 400 and error_code(r) == "json_too_deep", r.text
    r = await c.post("/xiaozhi/ota/", headers=device.headers(), content='{"application": {"version": 3}}')
    assert r.status_code == 422 and error_code(r) == "validation_failed", r.text
    limit = stack.services.config.edge.max_body_bytes
    big = json.dumps({"padding": "x" * limit})
    r = await c.post("/xiaozhi/ota/", headers=device.headers(), content=big)
    assert r.status_code == 413 and error_code(r) == "body_too_large", r.text
    # None of these left a code behind for the device; a good request still works.
    assert "activation" in await device.check()


async def test_activation_polls_that_are_refused(stack: Api) -> None:
    stranger = Device(stack)
    r = await stranger.activate()  # never asked for a code
    assert r.status_code == 404 and error_code(r) == "not_found", r.text

    device = Device(stack)
    await device.check()
    other_client = Device(stack)
    other_client.device_id = device.device_id  # the same MAC, another client
    r = await other_client.activate()
    assert r.status_code == 409 and error_code(r) == "activation_pending", r.text
    r = await device.activate("{not json")
    assert r.status_code == 400 and error_code(r) == "malformed_json", r.text
    r = await device.activate(json.dumps({"challenge": "not-the-one"}))
    assert r.status_code == 409 and error_code(r) == "challenge_mismatch", r.text
    r = await device.activate()
    assert r.status_code == 202, r.text


async def test_an_expired_code_is_refused_and_replaced(stack: Api) -> None:
    devices = stack.services.devices
    settings = devices.settings
    devices.settings = msgspec.structs.replace(settings, code_ttl=1.0)
    try:
        device = Device(stack)
        code = (await device.check())["activation"]["code"]
    finally:
        devices.settings = settings
    await asyncio.sleep(1.5)
    _, _, r = await bind(stack, code)
    assert r.status_code == 410 and error_code(r) == "activation_expired", r.text
    r = await device.activate()
    assert r.status_code == 410 and error_code(r) == "activation_expired", r.text
    spent = device.challenge
    fresh = (await device.check())["activation"]  # a new code and challenge
    assert fresh["challenge"] != spent and re.fullmatch(r"\d{6}", fresh["code"])
    r = await device.activate()
    assert r.status_code == 202, r.text


# --- firmware ------------------------------------------------------------------------------------


async def test_a_newer_firmware_image_is_offered_and_served(stack: Api) -> None:
    board = f"board-{uuid.uuid4().hex[:8]}"
    folder = stack.services.data_dir / "firmware" / board
    folder.mkdir(parents=True)
    image = bytes(range(256)) * 64
    (folder / "2.0.0.bin").write_bytes(image)
    (folder / "1.10.0.bin").write_bytes(b"older")
    (folder / "notes.txt").write_text("not an image")
    (folder / "3.0-beta.bin").write_bytes(b"a name the firmware cannot compare")

    old = await Device(stack, version="1.9.2", board=board).check()
    assert old["firmware"] == {"version": "2.0.0",
                               "url": f"{stack.edge.url}/xiaozhi/ota/download/{board}/2.0.0.bin"}
    r = await stack.client.get(old["firmware"]["url"])
    assert r.status_code == 200 and r.content == image
    assert r.headers["content-length"] == str(len(image))
    current = await Device(stack, version="2.0.0", board=board).check()
    assert current["firmware"] == {"version": "2.0.0", "url": ""}
    other_board = await Device(stack, version="0.1.0", board="no-such-board").check()
    assert other_board["firmware"] == {"version": "0.1.0", "url": ""}

    (stack.services.data_dir / "secret.bin").write_bytes(b"secret")
    for path in (f"{board}/..%2F..%2Fsecret.bin", "..%2Fsecret.bin", f"%2e%2e/{board}/2.0.0.bin",
                 f"{board}/2.0.0.bin%2F..%2F..%2F..%2Fsecret.bin", f"{board}/notes.txt"):
        r = await stack.client.get(f"/xiaozhi/ota/download/{path}")
        assert r.status_code == 400 and error_code(r) == "invalid_firmware_path", (path, r.text)
    r = await stack.client.get(f"/xiaozhi/ota/download/{board}/9.9.9.bin")
    assert r.status_code == 404, r.text


async def test_a_public_url_names_the_socket_and_downloads(stack: Api) -> None:
    edge = stack.services.config.edge
    stack.services.config.edge = msgspec.structs.replace(edge, public_url="https://voice.example.org/")
    try:
        answer = await Device(stack).check()
    finally:
        stack.services.config.edge = edge
    assert answer["websocket"]["url"] == "wss://voice.example.org/xiaozhi/v1/"


# --- idle devices --------------------------------------------------------------------------------


async def test_an_idle_device_is_told_goodbye(stack: Api) -> None:
    async with XiaozhiDevice(url(stack), device_id=mac()) as device:
        await device.hello()
        await device.listen("detect", text="hello there")  # a turn, then silence
        await device.wait_json("tts", state="stop", timeout=60)
        goodbye = await device.wait_json("goodbye", timeout=IDLE_S * 4)
        assert goodbye.message == {"type": "goodbye", "session_id": device.session_id}
        assert await device.wait_closed() == 1000
        answered = next(r.at for r in device.received if r.message.get("type") == "tts"
                        and r.message.get("state") == "stop")
        assert goodbye.at - answered >= IDLE_S - 0.5  # idle counts from the answer, not the hello
    events = await until_logged(stack, device.session_id, "session.ended")
    ended = next(e for e in events if e.type == "session.ended")
    assert ended.reason == "idle"  # type: ignore[attr-defined]


def ws_url(api: Api) -> str:
    return api.edge.url.replace("http://", "ws://") + "/ws"


# --- tokens on the socket ------------------------------------------------------------------------


def device_headers(authorization: str) -> dict[str, str]:
    return {"Authorization": authorization, "Protocol-Version": "1", "Device-Id": mac(),
            "Client-Id": "9f8e7d6c-0000-4000-8000-0000000000aa"}


HELLO = {"type": "hello", "version": 1, "transport": "websocket",
         "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}


@pytest.mark.parametrize("authorization", ["Bearer ", "Bearer test-token"])
async def test_an_empty_or_placeholder_token_is_anonymous(stack: Api, authorization: str) -> None:
    async with websockets.connect(url(stack), additional_headers=device_headers(authorization)) as ws:
        await ws.send(json.dumps(HELLO))
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["session_id"], hello
    async with websockets.connect(ws_url(stack), additional_headers={"Authorization": authorization}) as ws:
        assert json.loads(await ws.recv())["type"] == "session"

    edge = stack.services.config.edge
    stack.services.config.edge = msgspec.structs.replace(edge, anonymous=False)
    try:
        for target, headers in ((url(stack), device_headers(authorization)),
                                (ws_url(stack), {"Authorization": authorization})):
            async with websockets.connect(target, additional_headers=headers) as ws:
                assert json.loads(await ws.recv())["code"] == "token_missing"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    finally:
        stack.services.config.edge = edge


@pytest.mark.parametrize("authorization", ["Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer test-token2"])
async def test_any_other_invalid_token_is_refused(stack: Api, authorization: str) -> None:
    for target, headers in ((url(stack), device_headers(authorization)),
                            (ws_url(stack), {"Authorization": authorization})):
        async with websockets.connect(target, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["code"] == "token_invalid"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_the_ota_checks_language_is_the_hint_of_the_devices_anonymous_sessions(
        stack: Api) -> None:
    """Stock firmware names its language only in the OTA check's Accept-Language; its
    anonymous sessions (the default assistant) are then heard and answered in it, unless
    the hello names another."""
    async def started(device: Device, hello: dict[str, Any] | None = None) -> dict[str, Any]:
        async with XiaozhiDevice(url(stack), device_id=device.device_id,
                                 client_id=device.client_id) as xz:
            if hello is None:
                await xz.hello()
            else:
                await xz.send(hello)
                xz.session_id = (await xz.wait_json("hello")).message["session_id"]
            sid = xz.session_id
        event = next(e for e in await until_logged(stack, sid, "session.started")
                     if e.type == "session.started")
        return msgspec.to_builtins(event)  # type: ignore[no-any-return]

    mandarin, english, silent = Device(stack), Device(stack), Device(stack)
    for device, language in ((mandarin, "zh-CN,zh;q=0.9,en;q=0.8"), (english, "en-US")):
        r = await stack.client.post("/xiaozhi/ota/", content=device.system_info(),
                                    headers={**device.headers(), "Accept-Language": language})
        assert r.status_code == 200, r.text
    r = await stack.client.post("/xiaozhi/ota/", content=silent.system_info(),
                                headers={k: v for k, v in silent.headers().items()
                                         if k != "Accept-Language"})
    assert r.status_code == 200, r.text
    assert (await started(mandarin))["language"] == "zh"
    assert (await started(english))["language"] == "en"
    assert (await started(silent)).get("language") is None
    assert (await started(Device(stack))).get("language") is None  # no OTA check at all
    said = {"type": "hello", "version": 1, "transport": "websocket", "language": "en-US",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                             "frame_duration": 60}}
    assert (await started(mandarin, said))["language"] == "en"  # the hello's own wins
