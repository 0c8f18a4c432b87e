"""Validation at the edge: what a client sends is checked as strictly as the actors
will decode it, every JSON the edge parses is bounded in depth, malformed SDP is a 422,
typed text and greetings have limits, and every refusal is one log line with its reason.

Real clients against the real app: websockets for `/ws` and xiaozhi, an aiortc peer for
WebRTC, httpx for the REST API; the dialogue actor (echo LLM) answers behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
import typing
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from audio.encode import OPUS_FRAME_MS, OPUS_RATES
from bus.client import Message
from bus.log import load
from edge import jsonparse
from edge.api.models import GREETING_MAX_CHARS
from edge.errors import ApiError
from edge.realtime.limits import IGNORED_WAITS, POLICY, TURN_CHARS
from edge.realtime.session import check_readable
from edge.webrtc.peer import NAMED_LINE_CHARS
from edge.xiaozhi import protocol
from hosting.logs import TextFormatter
from schemas import AudioParams, SessionEnded, SessionStarted, ToolCall, UserText, decode, new_id
from tests.api_harness import Api
from tests.test_ws import until
from tests.xiaozhi_client import XiaozhiDevice

pytestmark = pytest.mark.stack("dialogue", loopback_ice=True)

DEEP = 1000  # the nesting that used to raise RecursionError
# What the edge itself appends to a session's log (the actors append the rest).
EDGE_EVENTS = {"session.started", "session.ended", "user.text", "listen.started",
               "listen.stopped", "turn.interrupted", "session.tools", "tool.result"}


class Published:
    """Every event stored while the module runs, as the bytes the actors will read."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)


@pytest.fixture(scope="module")
async def published(stack: Api) -> AsyncIterator[Published]:
    collector = Published()
    sub = await stack.services.bus.subscribe("vagent.session.*.evt.>", collector)
    yield collector
    await sub.stop()


def ws_url(api: Api, path: str = "/ws", query: str = "") -> str:
    return api.edge.url.replace("http://", "ws://") + path + (f"?{query}" if query else "")


def xiaozhi_url(api: Api) -> str:
    return ws_url(api, protocol.PATH)


def mac() -> str:
    raw = new_id().encode().hex()[-12:].upper()
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def close_code(ws: Any) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


def hello(**fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "hello", "version": 1, "features": {"mcp": False}, "transport": "websocket",
        "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}
    for name, value in fields.items():
        if name in ("format", "sample_rate", "channels", "frame_duration"):
            message["audio_params"][name] = value
        else:
            message[name] = value
    return message


async def say_hello(api: Api, message: dict[str, Any] | str) -> tuple[XiaozhiDevice, int | None]:
    """Send a hello; the device (its server hello, or its error) and the close code (None
    while it stays open)."""
    device = XiaozhiDevice(xiaozhi_url(api), device_id=mac())
    await device.connect()
    await device.send(message if isinstance(message, str) else json.dumps(message))
    try:
        await device.wait_for(lambda r: r.kind == "json" and r.message["type"] in ("hello", "error"),
                              timeout=10)
    except ConnectionError:
        pass
    if device.messages("hello"):
        device.server_hello = device.messages("hello")[0]
        device.session_id = device.server_hello["session_id"]
        return device, None
    return device, await device.wait_closed()


async def started_of(api: Api, sid: str) -> SessionStarted:
    async with asyncio.timeout(10):
        while True:
            entries, _ = await load(api.services.bus, "session", sid)
            for entry in entries:
                assert entry.event is not None, f"undecodable seq {entry.seq}"
                if isinstance(entry.event, SessionStarted):
                    return entry.event
            await asyncio.sleep(0.05)


def refusals(caplog: pytest.LogCaptureFixture, code: str) -> list[str]:
    """The log lines (as the default text format prints them) of refusals with `code`."""
    formatter = TextFormatter()
    return [formatter.format(r) for r in caplog.records
            if r.name.startswith("vagent.edge") and getattr(r, "code", None) == code]


# --- xiaozhi: the hello is decoded as strictly as the actors decode session.started -------------


BAD_HELLOS = {
    "float_rate": ({"sample_rate": 16000.0}, "$.audio_params.sample_rate"),
    "list_rate": ({"sample_rate": [16000]}, "$.audio_params.sample_rate"),
    "string_rate": ({"sample_rate": "16000"}, "$.audio_params.sample_rate"),
    "odd_rate": ({"sample_rate": 44100}, "$.audio_params.sample_rate"),
    "object_frame": ({"frame_duration": {}}, "$.audio_params.frame_duration"),
    "odd_frame": ({"frame_duration": 30}, "$.audio_params.frame_duration"),
    "three_channels": ({"channels": 3}, "$.audio_params.channels"),
    "no_channels": ({"channels": 0}, "$.audio_params.channels"),
    "float_channels": ({"channels": 1.0}, "$.audio_params.channels"),
    "pcm_format": ({"format": "pcm16"}, "$.audio_params.format"),
    "list_format": ({"format": ["opus"]}, "$.audio_params.format"),
    "float_downlink": ({"downlink_audio_params": {"sample_rate": 24000.0}},
                       "$.downlink_audio_params.sample_rate"),
    "params_list": ({"audio_params": [16000]}, "$.audio_params"),
    "features_string": ({"features": "mcp"}, "$.features"),
    "mcp_string": ({"features": {"mcp": "yes"}}, "$.features.mcp"),
    "udp": ({"transport": "udp"}, "$.transport"),
    "float_version": ({"version": 1.0}, "$.version"),
}


@pytest.mark.parametrize("case", sorted(BAD_HELLOS))
async def test_a_hello_the_actors_could_not_read_is_refused(stack: Api, case: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    fields, at = BAD_HELLOS[case]
    caplog.set_level(logging.INFO, logger="vagent.edge")
    device, code = await say_hello(stack, hello(**fields))
    assert code == 4422, device.messages()
    [error] = device.messages("error")
    assert error["code"] == "bad_hello" and error["details"]["at"] == at, error
    field = at.rpartition(".")[2]
    assert field in error["message"]
    # One line, in the default format, that says why: no traceback needed.
    [line] = refusals(caplog, "bad_hello")
    assert "\n" not in line and "connection refused" in line and field in line


async def test_every_opus_format_the_codec_takes_is_accepted(stack: Api) -> None:
    assert set(typing.get_args(protocol.OpusRate)) == OPUS_RATES
    assert set(typing.get_args(protocol.OpusFrameMs)) == OPUS_FRAME_MS
    device, code = await say_hello(stack, hello(sample_rate=48000, channels=2, frame_duration=20,
                                                downlink_audio_params={"sample_rate": 16000,
                                                                       "frame_duration": 120}))
    assert code is None
    started = await started_of(stack, device.session_id)
    assert started.audio_in == AudioParams(format="opus", sample_rate=48000, channels=2, frame_duration=20)
    assert started.audio_out == AudioParams(format="opus", sample_rate=16000, channels=1,
                                            frame_duration=120)
    assert device.server_hello["audio_params"]["sample_rate"] == 16000
    await device.close()


def test_an_unreadable_event_is_never_appended() -> None:
    """The last line of defence: msgspec does not check types when a Struct is built."""
    bad = SessionStarted(session_id="s1", audio_in=AudioParams(sample_rate=16000.0))  # type: ignore[arg-type]
    with pytest.raises(ApiError) as refused:
        check_readable(bad)
    assert refused.value.status == 422 and "sample_rate" in refused.value.message
    check_readable(SessionStarted(session_id="s1", audio_in=AudioParams()))


@pytest.mark.parametrize("handshake", ["device", "client"])
async def test_handshake_ids_are_checked(stack: Api, handshake: str) -> None:
    device = XiaozhiDevice(xiaozhi_url(stack), device_id="a.b *" if handshake == "device" else mac(),
                           client_id="x" * 129 if handshake == "client" else "c1")
    async with device:
        assert await device.wait_closed() == 4400
    assert device.messages("error")[0]["code"] == f"invalid_{handshake}_id"


# --- nesting: every JSON the edge reads ---------------------------------------------------------


def test_nesting_is_measured_outside_strings() -> None:
    assert not jsonparse.too_deep(nested(32).encode())
    assert jsonparse.too_deep(nested(33).encode())
    assert jsonparse.too_deep(("[{" * 17 + "}]" * 17).encode())
    assert not jsonparse.too_deep(json.dumps({"a": "[" * 100, "b": ['\\"[[' * 50]}).encode())
    assert jsonparse.too_deep(json.dumps(["\\", "x\\\"", json.loads(nested(40))]).encode())
    rng = random.Random(14)

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 45 or roll < 0.3:
            return rng.choice(['a[\\"{', "\\", 1, None, '"]}', "[[[["])
        if roll < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", '\\"']): value(depth + 1) for _ in range(rng.randint(0, 3))}

    def depth_of(v: Any) -> int:
        if isinstance(v, (list, dict)):
            return 1 + max((depth_of(x) for x in (v.values() if isinstance(v, dict) else v)), default=0)
        return 0

    for _ in range(2000):
        v = value(0)
        assert jsonparse.too_deep(json.dumps(v).encode(), 20) == (depth_of(v) > 20), v


async def test_deep_json_on_ws_is_an_error_and_the_session_goes_on(stack: Api,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vagent.edge")
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.recv()
        await ws.send('{"type":"user.text","text":"x","extra":' + nested(DEEP) + "}")
        error = (await until(ws, "error"))[-1]
        assert error["code"] == "json_too_deep" and "32" in error["message"]
        await ws.send(nested(DEEP))
        assert (await until(ws, "error"))[-1]["code"] == "json_too_deep"
        # 32 levels are fine (and the field is ignored).
        await ws.send(json.dumps({"type": "user.text", "text": "still here",
                                  "extra": json.loads(nested(31))}))
        assert (await until(ws, "assistant.message"))[-1]["text"] == "You said: still here."
    # The first refusal is logged as it happens, the second counted into one line that the
    # connection's end writes.
    async with asyncio.timeout(10):
        while len(refusals(caplog, "json_too_deep")) < 2:
            await asyncio.sleep(0.05)
    first, counted = [r for r in caplog.records if getattr(r, "code", None) == "json_too_deep"]
    assert not hasattr(first, "count") and getattr(counted, "count", None) == 1, counted.__dict__


async def test_a_stream_of_bad_messages_is_read_at_the_error_budget_and_none_is_lost(
        stack: Api) -> None:
    budget = stack.services.config.edge.max_errors_per_second
    bad = 2 * int(budget) + 20  # the burst (2×), then 20 more
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.recv()
        began, errors, answered = time.monotonic(), [], None
        for n in range(bad):
            await ws.send('{"type": "dance"}' if n % 2 else "{")
        await ws.send(json.dumps({"type": "user.text", "text": "still here"}))
        async with asyncio.timeout(bad / budget + 15):
            while answered is None:
                message = json.loads(await ws.recv())
                if message["type"] == "error":
                    errors.append(time.monotonic() - began)
                elif message["type"] == "assistant.message":
                    answered = message["text"]
    # Each bad message is answered, in order, and the good one after them: nothing is dropped.
    assert len(errors) == bad and answered == "You said: still here."
    # The burst at once, the rest at the budget's rate: not the message rate (100 a second).
    assert sum(t < 1.0 for t in errors) <= 2 * budget + budget + 2, errors
    assert errors[-1] >= (bad - 2 * budget) / budget * 0.8, errors


async def test_deep_json_in_a_xiaozhi_hello_closes_4400(stack: Api) -> None:
    device, code = await say_hello(stack, '{"type":"hello","extra":' + nested(DEEP) + "}")
    assert code == 4400 and device.messages("error")[0]["code"] == "json_too_deep"
    device, code = await say_hello(stack, '{"type":"hello", "version": 1')
    assert code == 4400 and device.messages("error")[0]["code"] == "bad_message"


async def test_deep_json_from_a_xiaozhi_device_is_an_error_and_the_session_goes_on(stack: Api) -> None:
    async with XiaozhiDevice(xiaozhi_url(stack), device_id=mac()) as device:
        await device.hello()
        await device.send('{"type":"listen","state":"detect","text":' + nested(DEEP) + "}")
        assert (await device.wait_json("error")).message["code"] == "json_too_deep"
        mark = len(device.received)
        await device.listen("detect", text="hello again")
        assert (await device.wait_json("stt", start=mark)).message["text"] == "hello again"


@pytest.mark.parametrize("path", ["/webrtc/offer", "/api/v1/auth/login"])
async def test_deep_json_over_http_is_a_400(stack: Api, path: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vagent.edge")
    r = await stack.client.post(path, headers={"content-type": "application/json"},
                                content=b'{"extra":' + nested(DEEP).encode() + b', "type": "offer"}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep", r.text
    [line] = refusals(caplog, "json_too_deep")
    assert path in line and "deeper than 32" in line


# --- text limits ---------------------------------------------------------------------------------


async def test_typed_text_longer_than_the_limit_is_refused(stack: Api) -> None:
    limit = stack.services.config.edge.max_text_chars
    assert limit == 2000
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "user.text", "text": "a" * (limit + 1)}))
        error = (await until(ws, "error"))[-1]
        assert error["code"] == "text_too_long" and error["details"]["limit"] == limit
        for bad in ({"type": "user.text", "text": 5}, {"type": "user.text"},
                    {"type": "listen.start", "mode": "shout"}, {"type": 3}):
            await ws.send(json.dumps(bad))
            assert (await until(ws, "error"))[-1]["code"] == "bad_message", bad
        await ws.send(json.dumps({"type": "user.text", "text": "b" * limit}))
        answer = (await until(ws, "assistant.message"))[-1]
        assert answer["text"].startswith("You said: bbb")
        # The longest turn counts as five against the turn rate: the next long one waits.
        await ws.send(json.dumps({"type": "user.text", "text": "c" * limit}))
        error = (await until(ws, "error"))[-1]
        assert error["code"] == "too_many_turns" and error["details"]["counts"] == 5, error
        assert error["details"]["retry_after"] > 1, error
    async with XiaozhiDevice(xiaozhi_url(stack), device_id=mac()) as device:
        await device.hello()
        await device.listen("detect", text="hi xiaozhi " + "a" * limit)
        error = (await device.wait_json("error")).message
        assert error["code"] == "text_too_long" and "listen detect" in error["message"]
        for bad in ({"type": "listen", "state": "detect", "text": ["hi"]},
                    {"type": "listen", "state": "shout"}, {"type": "mcp", "payload": "x"}):
            mark = len(device.received)
            await device.send(bad)
            assert (await device.wait_json("error", start=mark)).message["code"] == "bad_message", bad
        assert device.messages("stt") == []


# --- a flood of typed turns -----------------------------------------------------------------------

FLOOD_TURNS = 16  # typed turns a flooder sends back to back: well past the turn limit's burst
FLOOD_PAUSE = 0.02  # between a flooder's messages: half the per-connection message rate


@dataclasses.dataclass
class Flood:
    session_id: str
    sent: int = 0
    seconds: float = 0.0  # from the first turn sent until the edge closed the connection
    close_code: int | None = None
    refusals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    refused_at: list[float] = dataclasses.field(default_factory=list)  # monotonic, as received


async def flood_ws(api: Api, text: str) -> Flood:
    """FLOOD_TURNS typed turns over `/ws` as fast as the message rate lets one connection
    send, whatever the edge answers, until it closes the connection."""
    async with websockets.connect(ws_url(api)) as ws:
        flood = Flood(json.loads(await ws.recv())["session_id"])
        seen: list[tuple[float, dict[str, Any]]] = []

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    seen.append((time.monotonic(), json.loads(raw)))

        reader = asyncio.create_task(read())
        began = time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):
            while flood.sent < FLOOD_TURNS:
                await ws.send(json.dumps({"type": "user.text", "text": f"{flood.sent} {text}"}))
                flood.sent += 1
                await asyncio.sleep(FLOOD_PAUSE)
        async with asyncio.timeout(60):
            await reader
        flood.seconds = time.monotonic() - began
        flood.close_code = ws.close_code
        refused = [(at, m) for at, m in seen if m["type"] == "error"]
        flood.refusals = [m for _, m in refused]
        flood.refused_at = [at for at, _ in refused]
        return flood


async def flood_xiaozhi(api: Api, text: str) -> Flood:
    """The same flood as xiaozhi `listen detect`."""
    async with XiaozhiDevice(xiaozhi_url(api), device_id=mac()) as device:
        await device.hello()
        assert device.session_id is not None
        flood = Flood(device.session_id)
        began = time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):
            while flood.sent < FLOOD_TURNS and not device.closed:
                await device.listen("detect", text=f"{flood.sent} {text}")
                flood.sent += 1
                await asyncio.sleep(FLOOD_PAUSE)
        async with asyncio.timeout(60):
            while not device.closed:
                await asyncio.sleep(0.05)
        flood.seconds = time.monotonic() - began
        flood.close_code = device.close_code
        refused = [r for r in device.received if r.kind == "json" and r.message["type"] == "error"]
        flood.refusals = [r.message for r in refused]
        flood.refused_at = [r.at for r in refused]
        return flood


@pytest.mark.parametrize("flooder", [flood_ws, flood_xiaozhi], ids=["ws", "xiaozhi"])
async def test_a_session_flooding_typed_turns_is_refused_then_closed_while_another_is_answered(
        stack: Api, flooder: typing.Callable[[Api, str], typing.Awaitable[Flood]]) -> None:
    edge = stack.services.config.edge
    # As long as a turn may be while it counts once against the turn rate.
    text = ("w " * TURN_CHARS)[:TURN_CHARS - 5]
    flooding = asyncio.create_task(flooder(stack, text))
    async with websockets.connect(ws_url(stack)) as other:
        await other.recv()
        for n in range(5):  # while the flood goes on
            await other.send(json.dumps({"type": "user.text", "text": f"question {n}"}))
            answer = (await until(other, "assistant.message", timeout=60))[-1]
            assert answer["text"] == f"You said: question {n}." and not answer.get("interrupted")
    flood = await flooding
    # Told to wait IGNORED_WAITS times and sending on regardless: closed, so what it sent
    # meanwhile is not read later, after it may have gone.
    assert [m["code"] for m in flood.refusals] == ["too_many_turns"] * IGNORED_WAITS, flood.refusals
    assert flood.close_code == POLICY
    entries, _ = await load(stack.services.bus, "session", flood.session_id)
    ended = [e.event for e in entries if isinstance(e.event, SessionEnded)]
    assert [e.reason for e in ended] == ["too_many_turns"]
    # Nothing of a refused turn is stored, nor anything sent after the close; at most the
    # turn rate's burst and its rate over the flood were taken.
    stored = [e.event for e in entries if isinstance(e.event, UserText)]
    assert 0 < len(stored) <= flood.sent - len(flood.refusals)
    assert len(stored) <= edge.turn_burst + edge.max_turns_per_second * flood.seconds + 1
    # After each refusal the edge read nothing from the flooder for the time the refusal
    # said: the next refusal came at least that much later (half of it, for a loaded machine
    # delivering two at once).
    waits = [m["details"]["retry_after"] for m in flood.refusals]
    assert all(wait > 0 for wait in waits), flood.refusals
    assert flood.refused_at[-1] - flood.refused_at[0] >= 0.5 * sum(waits[:-1]), (
        flood.refused_at, waits)
    async with asyncio.timeout(10):  # both sessions' ends handled: the edge holds neither
        while len(stack.services.links):
            await asyncio.sleep(0.05)


# --- WebRTC: the offer's SDP, and the data channel ------------------------------------------------


async def make_offer(audio: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    if audio:
        pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def mutate(sdp: str, case: str) -> str:
    lines = sdp.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("m=audio"))
    rtpmap = next(i for i, line in enumerate(lines) if line.startswith("a=rtpmap:"))
    match case:
        case "m_line":
            lines[first] = "m=audio"
        case "payload_type":
            lines[first] = "m=audio 9 UDP/TLS/RTP/SAVPF opus"
        case "setup_role":
            lines = [("a=setup:sideways" if line.startswith("a=setup:") else line) for line in lines]
        case "fmtp_without_rtpmap":
            lines.insert(rtpmap + 1, "a=fmtp:111 minptime=10")
        case "rtpmap_without_rate":
            lines[rtpmap] = lines[rtpmap].split("/")[0]
        case "fingerprint_without_value":
            lines = [("a=fingerprint" if line.startswith("a=fingerprint:") else line) for line in lines]
        case "connection_line":
            lines = [("c=IN IP4" if line.startswith("c=") else line) for line in lines]
        case "ssrc":
            lines.insert(rtpmap, "a=ssrc:abc cname:x")
        case "no_fingerprint":
            lines = [line for line in lines if not line.startswith("a=fingerprint:")]
        case "no_setup":
            lines = [line for line in lines if not line.startswith("a=setup:")]
        case "no_ice":
            lines = [line for line in lines if not line.startswith("a=ice-")]
    return "\r\n".join(lines) + "\r\n"


UNPARSABLE = ["m_line", "payload_type", "setup_role", "fmtp_without_rtpmap", "rtpmap_without_rate",
              "fingerprint_without_value", "connection_line", "ssrc"]


@pytest.mark.parametrize("case", [*UNPARSABLE, "no_fingerprint", "no_setup", "no_ice"])
async def test_a_malformed_offer_is_a_422_naming_what_is_wrong(stack: Api, case: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vagent.edge")
    sdp = mutate(await make_offer(), case)
    r = await stack.client.post("/webrtc/offer", json={"sdp": sdp, "type": "offer"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_offer"
    if case in UNPARSABLE:
        line = error["details"]["line"]
        assert f"line {line}" in error["message"]
        assert sdp.splitlines()[line - 1][:20] in error["message"]
    else:
        assert {"no_fingerprint": "a=fingerprint", "no_setup": "a=setup",
                "no_ice": "a=ice-ufrag"}[case] in error["message"]
    [logged] = refusals(caplog, "bad_offer")
    assert "\n" not in logged and "reason=" in logged
    if case in UNPARSABLE:  # padded past a browser's size: refused without its line searched for
        padded = sdp + "a=x\r\n" * (NAMED_LINE_CHARS // 5)
        r = await stack.client.post("/webrtc/offer", json={"sdp": padded, "type": "offer"})
        assert r.status_code == 422 and "line" not in r.json()["error"]["details"], r.text
    assert len(stack.services.links) == 0  # no session was opened for it
    r = await stack.client.post("/webrtc/offer", json={"sdp": "x" * 70_000, "type": "offer"})
    assert r.status_code == 422 and "longer than" in r.json()["error"]["message"]


async def test_the_data_channel_refuses_what_ws_refuses(stack: Api) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")
    opened = asyncio.Event()
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    channel.on("open", opened.set)
    channel.on("message", lambda m: inbox.put_nowait(json.loads(m)))

    async def next_error() -> dict[str, Any]:
        async with asyncio.timeout(20):
            while (message := await inbox.get())["type"] != "error":
                pass
        return message

    try:
        await pc.setLocalDescription(await pc.createOffer())
        r = await stack.client.post("/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert r.status_code == 200, r.text
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))
        async with asyncio.timeout(15):
            await opened.wait()
        channel.send('{"type":"abort","x":' + nested(DEEP) + "}")
        assert (await next_error())["code"] == "json_too_deep"
        channel.send(json.dumps({"type": "user.text", "text": "c" * 2001}))
        assert (await next_error())["code"] == "text_too_long"
        channel.send(json.dumps({"type": "listen.start", "mode": None}))
        assert (await next_error())["code"] == "bad_message"
        channel.send(json.dumps({"type": "user.text", "text": "fine"}))
        async with asyncio.timeout(20):
            while (message := await inbox.get())["type"] != "assistant.message":
                pass
        assert message["text"] == "You said: fine."
    finally:
        await pc.close()


# --- the greeting ---------------------------------------------------------------------------------


async def first_answer(api: Api, headers: dict[str, str], assistant_id: str) -> str:
    """The first assistant.message of a new session with the assistant, after saying "hi":
    its greeting if it has one, else the answer."""
    token = headers["Authorization"].split()[1]
    async with websockets.connect(ws_url(api, query=f"token={token}&assistant_id={assistant_id}")) as ws:
        await until(ws, "session.started")
        await ws.send(json.dumps({"type": "user.text", "text": "hi"}))
        return str((await until(ws, "assistant.message"))[-1]["text"])


async def test_greeting_has_a_maximum_and_null_clears_it(stack: Api) -> None:
    c, h = stack.client, await stack.user()
    assert GREETING_MAX_CHARS == 500
    r = await c.post("/api/v1/assistants", headers=h, json={"name": "Long", "greeting": "g" * 501})
    assert r.status_code == 422 and r.json()["error"]["details"]["at"] == "$.greeting", r.text
    r = await c.post("/api/v1/assistants", headers=h, json={"name": "Kitchen",
                                                             "greeting": "Welcome to the kitchen."})
    assert r.status_code == 201, r.text
    greeter = r.json()["assistant_id"]
    r = await c.post("/api/v1/assistants", headers=h, json={"name": "Quiet", "greeting": "Hello!"})
    quiet = r.json()["assistant_id"]
    r = await c.patch(f"/api/v1/assistants/{quiet}", headers=h, json={"greeting": "h" * 20_000})
    assert r.status_code == 422 and r.json()["error"]["details"]["at"] == "$.greeting", r.text
    r = await c.patch(f"/api/v1/assistants/{quiet}", headers=h, json={"name": "Quieter"})
    assert r.status_code == 200 and r.json()["greeting"] == "Hello!"  # left out: unchanged
    r = await c.patch(f"/api/v1/assistants/{quiet}", headers=h, json={"greeting": None})
    assert r.status_code == 200 and r.json()["greeting"] is None, r.text
    assert (await c.get(f"/api/v1/assistants/{quiet}", headers=h)).json()["greeting"] is None
    # Cleared means none is spoken when a session starts.
    assert await first_answer(stack, h, greeter) == "Welcome to the kitchen."
    assert await first_answer(stack, h, quiet) == "You said: hi."


# --- every event the edge appends decodes in the actors --------------------------------------------


FUZZ: list[Any] = [16000, 16000.0, "16000", [16000], {}, None, True, 0, 1, 2, -1, 2**64, 1e300,
                   8000, 24000, 48000, 20, 60, 120, "opus", "pcm16", "", "\ud800"]
TEXTS: list[Any] = ["hello", "", "  ", "hi xiaozhi", "你好小智 天气", 5, None, ["x"], {"t": 1},
                    "x" * 2001, "\u0000nul", "emoji 😀", 1.5, True]


def fuzzed_hello(rng: random.Random) -> dict[str, Any]:
    message = hello()
    for name in rng.sample(["format", "sample_rate", "channels", "frame_duration"], rng.randint(0, 2)):
        message["audio_params"][name] = rng.choice(FUZZ)
    if rng.random() < 0.3:
        message["downlink_audio_params"] = {rng.choice(["sample_rate", "frame_duration", "channels"]):
                                            rng.choice(FUZZ)}
    if rng.random() < 0.2:
        message["features"] = rng.choice([{"mcp": rng.choice(FUZZ)}, rng.choice(FUZZ)])
    if rng.random() < 0.2:
        message["version"] = rng.choice([1, 2, 3, "2", 4, 1.0, None, [1]])
    return message


def fuzzed_message(rng: random.Random, kinds: list[str]) -> dict[str, Any]:
    message: dict[str, Any] = {"type": rng.choice(kinds)}
    for name, pool in (("text", TEXTS), ("mode", ["auto", "manual", "realtime", "loud", None, 1]),
                       ("state", ["start", "stop", "detect", "sing", None]),
                       ("payload", [{"jsonrpc": "2.0", "id": 99, "result": {}}, "x", [], None])):
        if rng.random() < 0.6:
            message[name] = rng.choice(pool)
    return message


async def test_every_event_the_edge_appends_decodes_in_the_actors(stack: Api,
                                                                   published: Published) -> None:
    rng = random.Random(14)
    # xiaozhi: fuzzed hellos, then fuzzed device messages in the sessions that started.
    for _ in range(30):
        device, code = await say_hello(stack, fuzzed_hello(rng))
        if code is None:
            for _ in range(8):
                await device.send(fuzzed_message(rng, ["listen", "listen", "abort", "mcp", "iot", "tts"]))
            await device.listen("start", mode="manual")
            await device.listen("stop")
        else:
            assert code in (4400, 4422), (code, device.messages())
        await device.close()
    # /ws: fuzzed commands.
    async with websockets.connect(ws_url(stack)) as ws:
        await ws.recv()
        for _ in range(40):
            await ws.send(json.dumps(fuzzed_message(rng, ["user.text", "user.text", "abort",
                                                          "listen.start", "listen.stop", "dance"])))
        await ws.send(json.dumps({"type": "user.text", "text": "done"}))
        await until(ws, "assistant.message")
    # A device with MCP tools (descriptions of every type) answers a routed tool call.
    tools = {"self.light": ("turns the light on", lambda args: "on"),
             "self.odd": (["not", "a", "string"], lambda args: "odd")}  # type: ignore[dict-item]
    async with XiaozhiDevice(xiaozhi_url(stack), device_id=mac(), tools=tools) as device:  # type: ignore[arg-type]
        await device.hello(mcp=True)
        sid = device.session_id
        async with asyncio.timeout(10):
            while not any(m.subject.endswith("session.tools") and sid in m.subject
                          for m in published.messages):
                await asyncio.sleep(0.05)
        await stack.services.bus.publish(ToolCall(session_id=sid, call_id="c1", name="self_light",
                                                  route="device"))
        async with asyncio.timeout(10):
            while not any(m.subject.endswith("tool.result") and sid in m.subject
                          for m in published.messages):
                await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the last session.ended
    seen: set[str] = set()
    for message in published.messages:
        event = decode(message.data)  # what every actor does first: it must not raise
        seen.add(event.type)
        if isinstance(event, SessionStarted) and event.audio_in is not None:
            assert event.audio_in.sample_rate in OPUS_RATES | {16000, 24000, 48000}
    assert EDGE_EVENTS <= seen, EDGE_EVENTS - seen


def test_the_shared_parser_maps_each_problem() -> None:
    class Message(msgspec.Struct):
        n: int

    with pytest.raises(jsonparse.JsonInputError) as caught:
        jsonparse.parse(b'{"n": 1.5}', Message)
    assert caught.value.problem == "invalid" and caught.value.at == "$.n"
    assert caught.value.api_error().status == 422
    with pytest.raises(jsonparse.JsonInputError) as caught:
        jsonparse.parse(b'"\\ud800"')  # a lone surrogate: no msgpack could hold it
    assert caught.value.api_error().code == "malformed_json"
    with pytest.raises(jsonparse.JsonInputError) as caught:
        jsonparse.parse(b"[1]", max_bytes=2)
    assert caught.value.api_error().status == 413
    with pytest.raises(jsonparse.JsonInputError) as caught:
        jsonparse.parse_message(b'{"type": "nope"}', {"yes": Message})
    assert caught.value.api_error(jsonparse.MESSAGE_CODES).code == "unknown_type"


def test_a_message_is_decoded_into_its_struct_by_its_type() -> None:
    class Photo(msgspec.Struct):
        image: str

    kinds = {"photo": Photo}
    # Fields the Struct does not name are skipped, whatever they hold.
    kind, photo = jsonparse.parse_message(
        b'{"extra": [' + b"{}," * 100_000 + b'{}], "type": "photo", "image": "AAAA"}', kinds)
    assert (kind, photo) == ("photo", Photo(image="AAAA"))
    with pytest.raises(jsonparse.JsonInputError) as caught:
        jsonparse.parse_message(b'{"type": "photo", "image": [' + b"{}," * 100_000 + b"{}]}", kinds)
    assert (caught.value.problem, caught.value.at) == ("invalid", "$.image")
    for not_a_message in (b'[{"type": "photo"}]', b'{"type": 7}', b"{}"):
        with pytest.raises(jsonparse.JsonInputError) as caught:
            jsonparse.parse_message(not_a_message, kinds)
        assert (caught.value.problem, caught.value.at) == ("invalid", "$.type")
    with pytest.raises(jsonparse.JsonInputError) as caught:
        jsonparse.parse_message(b'{"type": "photo", "image": "A', kinds)
    assert caught.value.problem == "malformed"
    assert jsonparse.message_type(b'{"image": "' + b"A" * 100_000 + b'", "type": "photo"}') == "photo"
    assert jsonparse.message_type(b'{"type": ' + b"[" * 100 + b"]" * 100 + b"}") is None
