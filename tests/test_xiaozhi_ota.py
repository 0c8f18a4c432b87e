"""A stock xiaozhi device's first boot against the live edge: the OTA check, activation by
code, the owner's binding, the WebSocket with the device token and a spoken turn; the
handshake's placeholder tokens; idle devices. The device side is spoken as the firmware
does (its OTA headers and system-info body, tests/xiaozhi_client.py for the WebSocket)."""

from __future__ import annotations

import json

import msgspec
import pytest
import websockets

from settings.config import Config
from tests.api_harness import Api
from tests.test_xiaozhi import mac, url


def short_idle(config: Config) -> Config:
    config.edge = msgspec.structs.replace(config.edge, hello_timeout=2.0)
    return config


pytestmark = pytest.mark.stack("asr", "dialogue", "tts", settings=short_idle)


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
