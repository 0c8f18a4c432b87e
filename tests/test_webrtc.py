"""`POST /webrtc/offer`: an aiortc peer in the test talks to the edge like a browser — a
spoken question on its microphone track, the session's events on the `events` data
channel, the spoken answer on its inbound track — through the real asr, dialogue (echo
LLM) and tts actors.

aioice leaves 127.0.0.1 out of its host candidates, and a CI machine may have no other
interface: both peers here (the edge runs in the test's process) gather on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import av
import msgspec
import numpy as np
import pytest
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bus.log import load
from bus.server import EmbeddedServer
from bus.subjects import audio_out
from edge.realtime.limits import TRY_LATER
from edge.webrtc import offer as offer_module
from edge.webrtc import peer
from edge.webrtc.audio import DownlinkTrack
from schemas import SessionEnded
from tests.api_harness import Api, api_config, serve_api
from tests.fixtures.audio import RATE, has_key_words, pcm

pytestmark = pytest.mark.stack("asr", "dialogue", "tts", loopback_ice=True)

FRAME = RATE // 50  # 20 ms of 16 kHz samples


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


class Microphone(MediaStreamTrack):
    """16 kHz mono speech at real time, silence before and after (as a quiet room)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.int16)
        self._start: float | None = None
        self._pts = 0

    def say(self, data: bytes) -> None:
        self._pending = np.frombuffer(data, "<i2").copy()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._pts / RATE - time.monotonic()))
        chunk, self._pending = self._pending[:FRAME], self._pending[FRAME:]
        chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class Browser:
    """The client side: a peer connection with the `events` channel and a microphone."""

    def __init__(self, audio: bool = True) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("events")
        self.opened = asyncio.Event()
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []
        self.mic = Microphone()
        self.heard: list[float] = []  # RMS of each inbound 20 ms frame
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("message", lambda m: self.messages.put_nowait(json.loads(m)))
        self.pc.on("track", self._track)
        if audio:
            self.pc.addTrack(self.mic)

    def _track(self, track: MediaStreamTrack) -> None:
        async def listen() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.heard.append(rms(frame.to_ndarray()))

        self._tasks.append(asyncio.ensure_future(listen()))

    async def offer(self, api: Api, headers: dict[str, str] | None = None, **body: Any) -> Any:
        if self.pc.localDescription is None:
            await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers candidates
        return await api.client.post("/webrtc/offer", headers=headers or {}, json={
            "sdp": self.pc.localDescription.sdp, "type": "offer", **body})

    async def connect(self, api: Api, headers: dict[str, str] | None = None, **body: Any) -> str:
        r = await self.offer(api, headers, **body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["type"] == "answer" and answer["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        async with asyncio.timeout(15):
            await self.opened.wait()
        return str(answer["session_id"])

    def send(self, value: dict[str, Any]) -> None:
        self.channel.send(json.dumps(value))

    async def until(self, kind: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """Read messages up to the first of type `kind` (with `fields`)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                self.seen.append(message)
                if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                    return message

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def ended(api: Api, sid: str, timeout: float = 10) -> SessionEnded:
    async with asyncio.timeout(timeout):
        while True:
            entries, _ = await load(api.services.bus, "session", sid)
            events = [e.event for e in entries if isinstance(e.event, SessionEnded)]
            if events:
                return events[-1]
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_spoken_question_gets_a_spoken_answer(stack: Api) -> None:
    browser = Browser()
    try:
        sid = await browser.connect(stack)
        hello = await browser.until("session")
        assert hello == {"type": "session", "session_id": sid, "resumed": False}
        started = await browser.until("session.started")
        assert started["transport"] == "webrtc" and started["audio_in"] == {
            "format": "pcm16", "sample_rate": 16000, "frame_duration": 20}
        assert started["audio_out"]["sample_rate"] == 48000
        sent: list[bytes] = []

        async def collect(msg: Any) -> None:
            sent.append(msg.data)

        sub = await stack.services.bus.subscribe(audio_out(sid), collect)
        await asyncio.sleep(0.3)  # the ASR worker subscribes to the session's audio
        browser.mic.say(pcm("what_time"))
        await browser.until("speech.started")
        final = await browser.until("transcript.final")
        assert has_key_words("what_time", final["text"]), final
        heard_before, sent_before = len(browser.heard), len(sent)  # before the answer is spoken
        answer = await browser.until("assistant.message")
        assert answer["text"] == f"You said: {final['text']}."
        await browser.until("tts.stopped")
        assert browser.seen[0]["type"] == "session"  # nothing came before the session's id
        # The answer was heard, all of it: as many loud 20 ms frames as the TTS actor sent.
        spoken = [m for m in browser.seen if m["type"] == "tts.sentence"]
        assert spoken
        await asyncio.sleep(0.3)  # the last frames are still on their way
        await sub.stop()
        sent_loud = sum(rms(np.frombuffer(f, "<i2")) > 200 for f in sent[sent_before:])
        heard_loud = sum(r > 200 for r in browser.heard[heard_before:])
        assert sent_loud >= 0.5 * sum(s["duration_ms"] for s in spoken) / 20
        assert abs(heard_loud - sent_loud) <= 0.15 * sent_loud, (heard_loud, sent_loud)
        # Silence while nobody speaks: the track kept going, at real time.
        assert max(browser.heard[:10]) < 50

        # Typed text on the same channel gets an answer too.
        browser.send({"type": "user.text", "text": "and now in writing"})
        answer = await browser.until("assistant.message", text="You said: and now in writing.")
        browser.send({"type": "hangup"})
        assert (await ended(stack, sid)).reason == "hangup"
    finally:
        await browser.close()
    async with asyncio.timeout(5):
        while len(stack.services.links):
            await asyncio.sleep(0.05)


async def test_typed_turns_bad_messages_resume_and_replacement(stack: Api) -> None:
    headers = await stack.user()
    browser = Browser(audio=False)
    try:
        sid = await browser.connect(stack, headers, echo_cancelled=True)
        started = await browser.until("session.started")
        assert started["user_id"] and started["assistant_id"]
        assert started["echo_cancelled"] is True  # as the web page says of a browser's microphone
        browser.send({"type": "user.text", "text": "hello there"})
        assert (await browser.until("assistant.message"))["text"] == "You said: hello there."
        browser.channel.send("{not json")
        assert (await browser.until("error"))["code"] == "bad_message"
        browser.send({"type": "dance"})
        assert (await browser.until("error"))["code"] == "unknown_type"
        browser.send({"type": "user.text", "text": "  "})
        assert (await browser.until("error"))["code"] == "bad_message"
    finally:
        await browser.close()  # the peer connection closing ends the session
    assert (await ended(stack, sid)).reason == "client_closed"

    # Resumed within 60 s by its owner; someone else cannot take it.
    stranger = Browser(audio=False)
    r = await stranger.offer(stack, await stack.user(), session_id=sid)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    await stranger.close()
    again, third = Browser(audio=False), Browser(audio=False)
    try:
        assert await again.connect(stack, headers, session_id=sid) == sid
        assert await again.until("session") == {"type": "session", "session_id": sid, "resumed": True}
        await again.until("session.started", resumed=True)
        # A reconnect replaces the link this edge still holds: the old peer is told why.
        assert await third.connect(stack, headers, session_id=sid) == sid
        assert (await again.until("goodbye"))["reason"] == "replaced"
        await third.until("session.started", resumed=True)
        entries, _ = await load(stack.services.bus, "session", sid)
        assert [e.event.reason for e in entries if isinstance(e.event, SessionEnded)] == [
            "client_closed", "replaced"]
        # The edge shutting down ends every link the same way.
        await stack.services.links.close_all("server_shutdown")
        assert (await third.until("goodbye"))["reason"] == "server_shutdown"
        assert (await ended(stack, sid)).reason == "server_shutdown"
    finally:
        await again.close()
        await third.close()


async def test_refusals_use_the_rest_error_shape(stack: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    client = stack.client
    r = await client.post("/webrtc/offer", json={"sdp": "garbage", "type": "offer"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_offer"
    r = await client.post("/webrtc/offer", json={"type": "answer", "sdp": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_failed"
    r = await client.post("/webrtc/offer", json={"sdp": "x", "type": "offer", "session_id": "a.*"})
    assert r.status_code == 422 and r.json()["error"]["details"]["at"] == "$.session_id"
    r = await client.post("/webrtc/offer", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    # Refused before anything parses them: too long, too many media sections.
    r = await client.post("/webrtc/offer", json={"sdp": "v=0\r\n" + "a=x\r\n" * 4000, "type": "offer"})
    assert r.status_code == 422 and "longer than" in r.json()["error"]["message"], r.text
    r = await client.post("/webrtc/offer", json={
        "sdp": "v=0\r\n" + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 5, "type": "offer"})
    assert r.status_code == 422 and "5 m-lines" in r.json()["error"]["message"], r.text
    # An offer without the events channel.
    browser = Browser(audio=False)
    no_channel = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    no_channel.addTransceiver("audio")
    await no_channel.setLocalDescription(await no_channel.createOffer())
    r = await client.post("/webrtc/offer", json={"sdp": no_channel.localDescription.sdp, "type": "offer"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_offer"
    await no_channel.close()

    r = await browser.offer(stack, {"Authorization": "Bearer nonsense"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_invalid"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await browser.offer(stack, session_id="01NOSUCHSESSION")
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
    monkeypatch.setattr(stack.services.config.edge, "anonymous", False)
    r = await browser.offer(stack)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_missing"
    monkeypatch.undo()

    monkeypatch.setattr(stack.services.config.edge, "max_connections", len(stack.services.links))
    r = await browser.offer(stack)
    assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
    assert r.headers["retry-after"] == "1"
    monkeypatch.setattr(stack.services, "draining", True)
    r = await browser.offer(stack)
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    monkeypatch.undo()
    await browser.close()
    assert len(stack.services.links) == 0  # no refusal left a session behind


async def test_a_peer_that_never_connects_ends_its_session(stack: Api,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer, "CONNECT_TIMEOUT", 0.5)
    browser = Browser(audio=False)
    try:
        r = await browser.offer(stack)  # answered, but the answer is never applied
        assert r.status_code == 200
        assert (await ended(stack, r.json()["session_id"])).reason == "connect_timeout"
    finally:
        await browser.close()


async def test_the_downlink_track_paces_and_fills_with_silence() -> None:
    track = DownlinkTrack()
    tone = (np.sin(np.arange(4800) / 10) * 8000).astype("<i2").tobytes()  # 100 ms
    track.push(tone)
    began = time.monotonic()
    frames = [await track.recv() for _ in range(10)]
    elapsed = time.monotonic() - began
    # 10 frames of 20 ms, the first at once: never faster than real time (a busy machine
    # may be slower, which is the bench's business, not this test's).
    assert elapsed >= 0.17, elapsed
    assert [f.samples for f in frames] == [960] * 10 and frames[9].pts == 9 * 960
    assert [rms(f.to_ndarray()) > 1000 for f in frames] == [True] * 5 + [False] * 5
    track.push(tone)
    track.flush()  # turn.interrupted: what was queued is not said
    assert rms((await track.recv()).to_ndarray()) == 0
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


# --- per address, and offers being set up -------------------------------------------------------

HELLO = {"type": "hello", "version": 1, "transport": "websocket",
         "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}}


async def refused_over_ws(url: str, headers: dict[str, str]) -> tuple[dict[str, Any], int | None]:
    """What a WebSocket refused at admission is told, and its close code."""
    async with websockets.connect(url, additional_headers=headers) as ws:
        message = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                await ws.recv()
    return message, closed.value.rcvd.code if closed.value.rcvd is not None else None


async def held_becomes(api: Api, address: str, count: int) -> None:
    """Wait (bounded) until the edge counts `count` connections of `address`: a client's
    close reaches the edge's side a moment later."""
    async with asyncio.timeout(10):
        while api.services.addresses.held(address) != count:
            await asyncio.sleep(0.02)


async def test_one_address_holds_at_most_max_sessions_per_address(
        stack: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted across /ws, xiaozhi and WebRTC, by the X-Forwarded-For address when the edge
    trusts it; the next one is refused in its own protocol's way and admitted once one ends."""
    edge = stack.services.config.edge
    monkeypatch.setattr(edge, "max_sessions_per_address", 3)
    monkeypatch.setattr(stack.services.config.auth, "trust_forwarded_for", True)
    address = "203.0.113.7"
    here = {"X-Forwarded-For": f"{address}, 10.0.0.1"}
    ws_url, xz_url = stack.edge.ws_url + "/ws", stack.edge.ws_url + "/xiaozhi/v1/"
    device_headers = {**here, "Device-Id": "AA:BB:CC:00:14:01", "Protocol-Version": "1"}
    browser, late = Browser(audio=False), Browser(audio=False)
    ws = await websockets.connect(ws_url, additional_headers=here)
    device = await websockets.connect(xz_url, additional_headers=device_headers)
    try:
        assert json.loads(await ws.recv())["type"] == "session"
        await device.send(json.dumps(HELLO))
        assert json.loads(await device.recv())["type"] == "hello"
        sid = await browser.connect(stack, here)
        assert stack.services.addresses.held(address) == 3

        # The fourth, whichever way it comes.
        for url, headers in ((ws_url, here), (xz_url, device_headers)):
            message, code = await refused_over_ws(url, headers)
            assert message["type"] == "error" and message["code"] == "too_many_sessions", message
            assert message["details"] == {"limit": 3}
            assert code == TRY_LATER
        r = await late.offer(stack, here)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_sessions", r.text
        assert int(r.headers["retry-after"]) >= 1
        assert stack.services.addresses.held(address) == 3  # the refusals took nothing
        # Another address is not concerned.
        async with websockets.connect(ws_url, additional_headers={"X-Forwarded-For": "203.0.113.8"}) as other:
            assert json.loads(await other.recv())["type"] == "session"

        # A /ws session ends: a WebRTC call fits again, and then the address is full again.
        await ws.close()
        await held_becomes(stack, address, 2)
        assert await late.connect(stack, here)
        message, code = await refused_over_ws(ws_url, here)
        assert message["code"] == "too_many_sessions" and code == TRY_LATER
        # A call ends (the peer connection closes): a /ws session fits again.
        await browser.close()
        assert (await ended(stack, sid)).reason == "client_closed"
        await held_becomes(stack, address, 2)
        async with websockets.connect(ws_url, additional_headers=here) as again:
            assert json.loads(await again.recv())["type"] == "session"
    finally:
        await ws.close()
        await device.close()
        await browser.close()
        await late.close()
    await held_becomes(stack, address, 0)


async def test_offers_beyond_those_being_set_up_get_503_at_once(
        stack: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """While `max_offers_in_progress` offers are being negotiated, the next is answered
    `503 busy` with Retry-After rather than queued; once one is done, offers go through."""
    monkeypatch.setattr(stack.services.config.edge, "max_offers_in_progress", 1)
    inside, go_on = threading.Event(), threading.Event()
    read_offer = offer_module.read_offer

    def held_open(sdp: str) -> Any:  # the first offer stays in its negotiation until told
        inside.set()
        go_on.wait(20)
        return read_offer(sdp)

    monkeypatch.setattr(offer_module, "read_offer", held_open)
    first, second = Browser(audio=False), Browser(audio=False)
    try:
        call = asyncio.create_task(first.connect(stack))
        assert await asyncio.to_thread(inside.wait, 20)
        r = await second.offer(stack)
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy", r.text
        assert r.headers["retry-after"] == "1"
        go_on.set()
        sid = await call
        monkeypatch.setattr(offer_module, "read_offer", read_offer)
        assert await second.connect(stack) != sid
    finally:
        go_on.set()
        await first.close()
        await second.close()
    assert stack.edge.app.state.webrtc_peers.negotiating == 0


async def test_offers_beyond_an_address_rate_get_429_before_anything_is_read(
        module_nats: EmbeddedServer, tmp_path: Path) -> None:
    """`edge.offers_per_second` per address, in bursts of `edge.offer_burst`: the next offer
    is refused whatever it holds (a body that is not even JSON would be a 415), with when to
    come back; another address is not concerned."""
    config = api_config(trust_forwarded_for=True)
    config.edge = msgspec.structs.replace(config.edge, offers_per_second=0.01, offer_burst=3)
    too_long = {"sdp": "x" * 20_000, "type": "offer"}
    async with serve_api(module_nats.url, tmp_path, config) as api:
        here = {"X-Forwarded-For": "203.0.113.30"}
        for _ in range(3):  # the burst: read, and refused for what it says
            r = await api.client.post("/webrtc/offer", json=too_long, headers=here)
            assert r.status_code == 422 and r.json()["error"]["code"] == "bad_offer", r.text
        r = await api.client.post("/webrtc/offer", content=b"not json",
                                  headers={**here, "Content-Type": "text/plain"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_offers", r.text
        retry = int(r.headers["retry-after"])
        assert retry > 60 and r.json()["error"]["details"]["retry_after"] == retry  # a token per 100 s
        r = await api.client.post("/webrtc/offer", json=too_long, headers={"X-Forwarded-For": "203.0.113.31"})
        assert r.status_code == 422, r.text


async def test_an_offer_cancelled_once_its_peer_exists_closes_the_peer_and_frees_the_address(
        stack: Api, module_nats: EmbeddedServer) -> None:
    """What uvicorn cancels when it shuts down (the requests still running): an offer whose
    peer is negotiated but whose session cannot open yet (the event log does not answer: its
    NATS server is stopped) closes its peer, and its address's slot is given back."""
    address = "127.0.0.1"
    before = stack.services.addresses.held(address)
    browser = Browser(audio=False)
    module_nats.proc.send_signal(signal.SIGSTOP)
    posting = asyncio.create_task(browser.offer(stack))
    try:
        async with asyncio.timeout(20):
            while True:
                peers = getattr(stack.edge.app.state, "webrtc_peers", None)
                held = next(iter(peers.active), None) if peers is not None else None
                if held is not None and held.pc.localDescription is not None:
                    break  # answered: opening its session now waits on NATS
                await asyncio.sleep(0.01)
        assert stack.services.addresses.held(address) == before + 1
        for task in list(stack.edge._server.server_state.tasks):  # as uvicorn does at its deadline
            task.cancel()
    finally:
        module_nats.proc.send_signal(signal.SIGCONT)
        posting.cancel()
        with contextlib.suppress(BaseException):
            await posting
        await browser.close()
    async with asyncio.timeout(20):
        await held.closed.wait()
    assert held.end_reason == "server_shutdown" and held.pc.connectionState == "closed"
    assert held not in peers.active
    await held_becomes(stack, address, before)
