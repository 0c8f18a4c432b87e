"""Property-based fuzzing of the edge's real-time doors, over a real server and a real
dialogue actor: `/ws` frames (any JSON value, text that is no JSON, binary), xiaozhi
text messages (hello variations; listen / abort / mcp with any fields) and binary audio
frames in protocol v1 / v2 / v3 (random bytes, wrong and truncated headers), and the
body of `POST /webrtc/offer` (any JSON, SDP-ish strings, any content type).

The property: the server never answers 500 and never drops a WebSocket without a close
frame (1006) or with 1011; it answers with the protocol's own error (an `error` message,
a 4xxx close, a 4xx over HTTP) or goes on. After the run a normal turn still works and the
process (the server runs in it) has not grown by more than MAX_GROWTH_MB."""

from __future__ import annotations

import asyncio
import json
import os
import re
import string
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas import new_id
from tests.api_harness import Api
from tests.xiaozhi_client import XiaozhiDevice, frame_up

pytestmark = pytest.mark.stack("dialogue", "tools", loopback_ice=True)

EXAMPLES = int(os.environ.get("VAGENT_FUZZ_EXAMPLES", "60"))  # per target
MAX_GROWTH_MB = 150
# Close codes that are the protocol's own answer: normal, going away (draining), policy
# (rate), too big, try later (full), and the 4xxx refusals (4400, 4401, 4408, 4422, ...).
ANSWERED = {1000, 1001, 1008, 1009, 1013}


def answered(code: int | None) -> bool:
    return code is not None and (code in ANSWERED or 4000 <= code < 5000)


def rss_mb() -> float:
    """This process's resident set (the server runs in it), from /proc."""
    with open(f"/proc/{os.getpid()}/status") as f:
        match = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    assert match
    return int(match.group(1)) / 1024


def fuzz(run: Callable[[Any], Awaitable[None]], strategy: st.SearchStrategy[Any],
         loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """A hypothesis test (run in a worker thread) that sends each example through `run` on
    the server's event loop."""
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(example=strategy)
    def test(example: Any) -> None:
        coro: Coroutine[Any, Any, None] = run(example)  # type: ignore[assignment]
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    return test


# --- strategies ----------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
NOT_JSON = st.text(max_size=200).filter(lambda t: not _is_json(t))


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def typed(types: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Messages of the protocol's own types with arbitrary (and sometimes right) fields."""
    fields = st.dictionaries(st.sampled_from(["text", "state", "mode", "reason", "payload", "session_id",
                                              "audio", "format", "sample_rate", "id", "x"]),
                             JSON_VALUES, max_size=5)
    return st.builds(lambda kind, rest: {**rest, "type": kind}, st.sampled_from(types) | st.text(max_size=10),
                     fields)


WS_TYPES = ["user.text", "abort", "listen.start", "listen.stop", "hangup", "ping", "hello"]
# Right messages with any text and mode too, so that turns start, are aborted and overlap.
WS_RIGHT = st.one_of(
    st.builds(lambda text: {"type": "user.text", "text": text}, st.text(max_size=60)),
    st.sampled_from([{"type": "abort"}, {"type": "listen.stop"}]),
    st.builds(lambda mode: {"type": "listen.start", "mode": mode},
              st.sampled_from(["auto", "manual", "realtime"]) | JSON_VALUES))
WS_FRAMES = st.one_of(JSON_VALUES.map(json.dumps), typed(WS_TYPES).map(json.dumps), WS_RIGHT.map(json.dumps),
                      NOT_JSON, st.binary(max_size=300))

XZ_TYPES = ["listen", "abort", "mcp", "iot", "goodbye", "hello", "sentence_end"]
LISTEN = st.fixed_dictionaries(
    {"type": st.just("listen")},
    optional={"state": st.sampled_from(["start", "stop", "detect"]) | st.text(max_size=8) | JSON_VALUES,
              "mode": st.sampled_from(["auto", "manual", "realtime"]) | JSON_VALUES,
              "text": JSON_VALUES})
MCP = st.fixed_dictionaries(
    {"type": st.just("mcp")},
    optional={"payload": st.one_of(JSON_VALUES, st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0") | JSON_VALUES},
        optional={"id": JSON_VALUES, "result": JSON_VALUES, "error": JSON_VALUES,
                  "method": st.text(max_size=20), "params": JSON_VALUES}))})


def audio_frames(version: int) -> st.SearchStrategy[bytes]:
    """Random bytes, frames with right and wrong headers, and truncated headers."""
    payload = st.binary(max_size=200)
    v2 = st.builds(lambda proto, kind, res, ts, n, p: struct.pack(">HHIII", proto, kind, res, ts, n) + p,
                   st.sampled_from([2, 0, 1, 3, 65535]), st.integers(0, 65535), st.integers(0, 2**32 - 1),
                   st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), payload)
    v3 = st.builds(lambda kind, res, size, p: struct.pack(">BBH", kind, res, size) + p,
                   st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535), payload)
    right = payload.map(lambda p: frame_up(version, p))
    truncated = st.builds(lambda frame, cut: frame[:cut], v2 | v3, st.integers(0, 15))
    return st.one_of(st.binary(max_size=300), right, v2, v3, truncated)


XZ_RIGHT = st.one_of(
    st.builds(lambda state, mode: {"type": "listen", "state": state, "mode": mode},
              st.sampled_from(["start", "stop"]), st.sampled_from(["auto", "manual", "realtime"])),
    st.builds(lambda text: {"type": "listen", "state": "detect", "text": text}, st.text(max_size=40)),
    st.builds(lambda reason: {"type": "abort", **reason},
              st.sampled_from([{}, {"reason": "wake_word_detected"}])))
XZ_MESSAGES = st.one_of(LISTEN, MCP, typed(XZ_TYPES), XZ_RIGHT).map(lambda m: json.dumps(m)) | NOT_JSON


def hellos(version: int) -> st.SearchStrategy[Any]:
    good = {"type": "hello", "version": version, "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}
    audio = st.fixed_dictionaries({}, optional={
        "format": st.sampled_from(["opus", "pcm"]) | JSON_VALUES,
        "sample_rate": st.sampled_from([8000, 16000, 24000, 48000]) | st.integers() | JSON_VALUES,
        "channels": st.integers(-1, 3) | JSON_VALUES,
        "frame_duration": st.sampled_from([20, 60]) | st.integers() | JSON_VALUES})
    varied = st.builds(lambda changes: {**good, **changes}, st.fixed_dictionaries({}, optional={
        "version": st.integers(-1, 4) | JSON_VALUES,
        "transport": st.sampled_from(["websocket", "udp"]) | JSON_VALUES,
        "audio_params": audio | JSON_VALUES, "features": JSON_VALUES,
        "downlink_audio_params": audio | JSON_VALUES, "type": st.sampled_from(["hello", "listen"])}))
    # Mostly hellos (the branches of one_of are equally likely), then anything else first.
    return st.one_of(varied.map(json.dumps), varied.map(json.dumps), varied.map(json.dumps),
                     JSON_VALUES.map(json.dumps), NOT_JSON, st.binary(max_size=40))


SDP_LINES = st.one_of(
    st.sampled_from(["v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
                     "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                     "c=IN IP4 0.0.0.0", "a=rtpmap:111 opus/48000/2", "a=setup:actpass", "a=mid:0",
                     "a=ice-ufrag:abcd", "a=ice-pwd:0123456789abcdef012345",
                     "a=fingerprint:sha-256 00:11", "a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
                     "a=sctp-port:5000", "a=sendrecv"]),
    st.text(alphabet=string.printable, max_size=60))
# A well-formed id (of nothing there is), id-like text with a `*` or `.` now and then, anything.
IDS = st.just(new_id()) | st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ*.", max_size=30) | JSON_VALUES
SDPS = st.lists(SDP_LINES, max_size=20).map("\r\n".join) | st.text(max_size=300)
OFFERS = st.one_of(
    JSON_VALUES.map(lambda v: ("application/json", json.dumps(v).encode())),
    st.builds(lambda sdp, kind, extra: ("application/json",
                                        json.dumps({**extra, "sdp": sdp, "type": kind}).encode()),
              SDPS, st.just("offer") | st.just("answer") | JSON_VALUES,
              st.fixed_dictionaries({}, optional={"assistant_id": IDS, "session_id": IDS})),
    st.tuples(st.sampled_from(["application/json", "text/plain", "application/sdp", "",
                               "multipart/form-data"]),
              st.binary(max_size=300)))


# --- the targets -------------------------------------------------------------------------------


async def drain(ws: Any, seconds: float = 0.15, seen: dict[str, int] | None = None) -> int | None:
    """Read what the server sends for a moment: None while open, else the close code (which
    must be the protocol's own); every text message must be JSON with a type."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await ws.recv()
                if isinstance(message, str):
                    kind = json.loads(message).get("type")
                    assert isinstance(kind, str), message
                    if seen is not None:
                        seen[kind] = seen.get(kind, 0) + 1
    except TimeoutError:
        return None
    except websockets.ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else None
        assert answered(code), f"/ws closed with {code}"
        return code


async def test_ws_frames(stack: Api) -> None:
    url = stack.edge.url.replace("http://", "ws://") + "/ws"
    state: dict[str, Any] = {"ws": None, "closes": []}
    seen: dict[str, int] = {}

    async def send(frame: str | bytes) -> None:
        if state["ws"] is None:
            state["ws"] = await websockets.connect(url, max_size=None)
            assert json.loads(await state["ws"].recv())["type"] == "session"
        try:
            await state["ws"].send(frame)
        except websockets.ConnectionClosed:
            pass
        code = await drain(state["ws"], seen=seen)
        if code is not None:
            state["closes"].append(code)
            state["ws"] = None

    start = rss_mb()
    await asyncio.to_thread(fuzz(send, WS_FRAMES, asyncio.get_running_loop()))
    if state["ws"] is not None:
        await state["ws"].close()
    print("/ws answers:", seen, "closes:", state["closes"])
    assert seen.get("error"), "the fuzzer reached the protocol's errors"
    await typed_turn(stack)
    assert rss_mb() - start < MAX_GROWTH_MB, (start, rss_mb())


async def xiaozhi_device(stack: Api, version: int) -> XiaozhiDevice:
    mac = ":".join(f"{b:02X}" for b in os.urandom(6))
    return XiaozhiDevice(stack.edge.url.replace("http://", "ws://") + "/xiaozhi/v1/", version=version,
                         device_id=mac)


async def settle(device: XiaozhiDevice, seconds: float = 0.2) -> None:
    """Wait a moment, or for the close; a close must be the protocol's own, every message
    either an expected one or an error with a code."""
    if not device.closed:
        try:
            await device.wait_closed(timeout=seconds)
        except TimeoutError:
            pass
    if device.closed:
        assert answered(device.close_code), f"xiaozhi closed with {device.close_code}"
    for message in device.messages("error"):
        assert isinstance(message.get("code"), str), message


async def test_xiaozhi_hello_variations(stack: Api) -> None:
    async def hello(example: tuple[int, Any]) -> None:
        version, message = example
        async with await xiaozhi_device(stack, version) as device:
            await device.send(message)
            # An answer comes: the server's hello, or an error and a 4xxx close.
            await device.wait_for(lambda r: r.kind == "json" and r.message.get("type") in ("hello", "error"),
                                  timeout=10)
            await settle(device)
            if device.messages("error"):
                assert device.closed, device.messages()
                outcomes[f"{device.messages('error')[0]['code']} {device.close_code}"] = outcomes.get(
                    f"{device.messages('error')[0]['code']} {device.close_code}", 0) + 1
            else:
                outcomes["hello"] = outcomes.get("hello", 0) + 1

    outcomes: dict[str, int] = {}
    strategy = st.sampled_from([1, 2, 3]).flatmap(lambda v: st.tuples(st.just(v), hellos(v)))
    await asyncio.to_thread(fuzz(hello, strategy, asyncio.get_running_loop()))
    print("xiaozhi hello outcomes:", outcomes)
    assert outcomes.get("hello") and len(outcomes) > 1, outcomes
    await xiaozhi_turn(stack)


async def test_xiaozhi_messages_and_audio_frames(stack: Api) -> None:
    async def session(example: tuple[int, list[str | bytes]]) -> None:
        version, frames = example
        async with await xiaozhi_device(stack, version) as device:
            await device.hello()
            for frame in frames:
                if device.closed:
                    break
                try:
                    await device.send(frame)
                except websockets.ConnectionClosed:
                    break
            await settle(device)
            for message in device.messages("error"):
                outcomes[message["code"]] = outcomes.get(message["code"], 0) + 1
            if device.closed:
                outcomes[f"closed {device.close_code}"] = outcomes.get(f"closed {device.close_code}", 0) + 1

    outcomes: dict[str, int] = {}
    strategy = st.sampled_from([1, 2, 3]).flatmap(lambda v: st.tuples(
        st.just(v), st.lists(XZ_MESSAGES | audio_frames(v), min_size=1, max_size=6)))
    start = rss_mb()
    await asyncio.to_thread(fuzz(session, strategy, asyncio.get_running_loop()))
    print("xiaozhi session outcomes:", outcomes)
    assert outcomes, "the fuzzer reached the protocol's errors"
    await xiaozhi_turn(stack)
    await typed_turn(stack)
    assert rss_mb() - start < MAX_GROWTH_MB, (start, rss_mb())


async def test_webrtc_offer_bodies(stack: Api) -> None:
    headers = await stack.user()

    async def offer(example: tuple[bool, tuple[str, bytes]]) -> None:
        signed, (content_type, body) = example
        h = {**(headers if signed else {}), **({"content-type": content_type} if content_type else {})}
        r = await stack.client.post("/webrtc/offer", content=body, headers=h)
        assert r.status_code < 500, (r.status_code, r.text, body[:200])
        key = f"{r.status_code} {r.json()['error']['code'] if r.status_code >= 400 else ''}".strip()
        statuses[key] = statuses.get(key, 0) + 1
        if r.status_code >= 400:
            error = r.json()["error"]
            assert isinstance(error["code"], str) and error["message"], r.text

    start = rss_mb()
    statuses: dict[str, int] = {}
    await asyncio.to_thread(fuzz(offer, st.tuples(st.booleans(), OFFERS), asyncio.get_running_loop()))
    print("/webrtc/offer answers:", statuses)
    assert len(statuses) > 2, statuses
    await typed_turn(stack)
    assert rss_mb() - start < MAX_GROWTH_MB, (start, rss_mb())


# --- after the run ----------------------------------------------------------------------------


async def typed_turn(stack: Api) -> None:
    """A normal `/ws` turn still gets its answer."""
    url = stack.edge.url.replace("http://", "ws://") + "/ws"
    text = f"still fine {new_id()[-6:]}"
    async with websockets.connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "session"
        await ws.send(json.dumps({"type": "user.text", "text": text}))
        async with asyncio.timeout(20):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "assistant.message":
                    assert message["text"] == f"You said: {text}."
                    return


async def xiaozhi_turn(stack: Api) -> None:
    """A normal device still says hello and its typed words are heard."""
    async with await xiaozhi_device(stack, 2) as device:
        await device.hello()
        await device.listen("detect", text="hello again")
        assert (await device.wait_json("stt", timeout=20)).message["text"] == "hello again"


async def test_health_after_fuzzing(stack: Api) -> None:
    r = await stack.client.get("/healthz")
    assert r.status_code == 200
    async with httpx.AsyncClient(base_url=stack.edge.url) as client:
        assert (await client.get("/api/v1/openapi.json")).status_code == 200
