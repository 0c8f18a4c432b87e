"""`/xiaozhi/v1/`: a xiaozhi device (tests/xiaozhi_client.py, byte for byte like the
firmware) against the live edge, with the ASR, dialogue (echo LLM) and TTS actors."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import msgspec
import pytest
import websockets

from audio.decode import Decoder
from bus.log import load
from edge.xiaozhi import framing
from edge.xiaozhi.mcp import llm_name
from edge.xiaozhi.protocol import after_wake_word, emotion_of, parse_hello
from schemas import Event, SessionStarted, new_id
from settings.config import Config, XiaozhiConfig
from tests.api_harness import Api
from tests.fixtures.audio import has_key_words, opus_packets, pcm
from tests.procs import vagent
from tests.xiaozhi_client import XiaozhiDevice, frame_up

HELLO_TIMEOUT = 1.0


def quick_hello_and_a_wake_word(config: Config) -> Config:
    config.edge = msgspec.structs.replace(config.edge, hello_timeout=HELLO_TIMEOUT,
                                          xiaozhi=XiaozhiConfig(wake_words=["hey vagent"]))
    return config


pytestmark = pytest.mark.stack("asr", "dialogue", "tts", settings=quick_hello_and_a_wake_word)


def url(api: Api) -> str:
    return api.edge.url.replace("http://", "ws://") + "/xiaozhi/v1/"


def mac() -> str:
    raw = new_id().encode().hex()[-12:].upper()
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


async def log_of(api: Api, sid: str) -> list[Event]:
    entries, _ = await load(api.services.bus, "session", sid)
    return [e.event for e in entries if e.event is not None]


async def until_logged(api: Api, sid: str, kind: str, timeout: float = 10) -> list[Event]:
    async with asyncio.timeout(timeout):
        while True:
            events = await log_of(api, sid)
            if any(e.type == kind for e in events):
                return events
            await asyncio.sleep(0.05)


def decoded_ms(frames: list[bytes], rate: int) -> float:
    decoder = Decoder("opus", rate)
    audio = b"".join(decoder.decode(f) for f in frames) + decoder.flush()
    return len(audio) / 2 / 16000 * 1000  # the decoder yields 16 kHz


def check_answer_order(device: XiaozhiDevice, start: int = 0) -> dict[str, Any]:
    """stt, llm, tts start, sentence_start(s), audio…, tts stop: in that order, and every
    audio frame between tts start and tts stop."""
    items = device.received[start:]
    names = []
    for r in items:
        if r.kind == "audio":
            names.append("audio")
        elif r.message["type"] == "tts":
            names.append("tts." + r.message["state"])
        else:
            names.append(r.message["type"])
    first = {n: names.index(n) for n in ("stt", "llm", "tts.start", "tts.sentence_start", "audio",
                                         "tts.stop")}
    assert first["stt"] < first["llm"] < first["tts.start"] < first["audio"], names
    assert first["tts.start"] < first["tts.sentence_start"], names
    last_audio = len(names) - 1 - names[::-1].index("audio")
    assert last_audio < first["tts.stop"], names
    return first


# --- a spoken turn in each protocol version ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version,downlink", [(1, None), (2, None), (3, 16000)])
async def test_a_spoken_question_gets_a_spoken_answer(stack: Api, version: int,
                                                      downlink: int | None) -> None:
    device_id, client_id = mac(), f"client-{new_id()}"
    async with XiaozhiDevice(url(stack), version=version, device_id=device_id,
                             client_id=client_id) as device:
        hello = await device.hello(
            downlink={"sample_rate": downlink, "frame_duration": 60} if downlink else None)
        rate = downlink or 24000
        assert hello == {"type": "hello", "transport": "websocket", "session_id": device.session_id,
                         "audio_params": {"format": "opus", "sample_rate": rate, "channels": 1,
                                          "frame_duration": 60}}
        await device.listen("start", "auto")
        await device.send_audio(opus_packets(pcm("what_time"), 16000, 60))
        await device.wait_json("tts", state="stop", timeout=60)
        first = check_answer_order(device)
        stt = device.messages("stt")[0]["text"]
        assert has_key_words("what_time", stt), stt
        llm = device.messages("llm")
        assert len(llm) == 1 and llm[0]["emotion"] == "happy" and llm[0]["text"] == "🙂"
        spoken = [m["text"] for m in device.messages("tts") if m["state"] == "sentence_start"]
        assert " ".join(spoken) == f"You said: {stt}."
        frames = device.audio()
        if version == 2:  # the downlink timestamps run in frame steps
            assert [f.timestamp for f in frames] == [i * 60 for i in range(len(frames))]
        sid = device.session_id
        assert device.received[first["tts.start"]].message == {"type": "tts", "state": "start"}
    events = await until_logged(stack, sid, "session.ended")
    started = next(e for e in events if e.type == "session.started")
    assert (started.transport, started.device_id, started.client_id) == (  # type: ignore[attr-defined]
        "xiaozhi", device_id.lower(), client_id)
    assert started.audio_in.sample_rate == 16000  # type: ignore[attr-defined]
    assert started.audio_out.sample_rate == rate  # type: ignore[attr-defined]
    stopped = next(e for e in events if e.type == "tts.stopped")
    heard = decoded_ms([f.audio for f in frames], rate)
    assert abs(heard - stopped.spoken_ms) <= 120, (heard, stopped.spoken_ms)  # type: ignore[attr-defined]
    assert abs(len(frames) * 60 - stopped.spoken_ms) <= 60  # type: ignore[attr-defined]
    assert events[-1].type == "session.ended" and events[-1].reason == "client_closed"  # type: ignore[attr-defined]


# --- typed text, wake words, abort ---------------------------------------------------------------


async def test_typed_text_through_listen_detect_and_wake_words(stack: Api) -> None:
    # As a browser does: query parameters, and no Protocol-Version (the hello's version, 3).
    async with XiaozhiDevice(url(stack), version=3, via_query=True, send_version=False,
                             device_id=mac()) as device:
        await device.hello(aec=True)  # the firmware of a board that cancels its echo says so
        await device.listen("detect", text="你好小智")  # a wake word alone: no turn
        await device.listen("detect", text="Hey vagent, how are you")  # the configured one
        stt = await device.wait_json("stt")
        assert stt.message["text"] == "how are you"
        await device.wait_json("tts", state="stop", timeout=30)
        assert [m["text"] for m in device.messages("stt")] == ["how are you"]
        check_answer_order(device)
        spoken = [m["text"] for m in device.messages("tts") if m["state"] == "sentence_start"]
        assert " ".join(spoken) == "You said: how are you."
        events = await log_of(stack, device.session_id)
        typed = [e for e in events if e.type == "user.text"]
        assert [(e.text, e.source) for e in typed] == [("how are you", "detect")]  # type: ignore[attr-defined]
        started = next(e for e in events if isinstance(e, SessionStarted))
        assert started.echo_cancelled is True


async def test_abort_mid_answer_stops_the_audio(stack: Api) -> None:
    story = " ".join(f"This is sentence number {n} of a long story." for n in range(1, 9))
    async with XiaozhiDevice(url(stack), version=2, device_id=mac()) as device:
        await device.hello()
        await device.listen("detect", text=story)
        await device.wait_for(lambda r: r.kind == "audio", timeout=30)
        await asyncio.sleep(0.5)
        await device.abort("wake_word_detected")
        aborted = len(device.received)
        stop = await device.wait_json("tts", state="stop", timeout=5, start=aborted)
        assert stop.at - device.received[aborted - 1].at < 0.5  # at once, not when TTS stops
        await asyncio.sleep(1.0)
        after = device.received[device.received.index(stop):]
        assert [r for r in after if r.kind == "audio"] == []  # not a frame after the stop
        assert len(device.messages("tts")) and device.messages("tts")[-1]["state"] == "stop"
        events = await until_logged(stack, device.session_id, "turn.interrupted")
        assert any(e.type == "turn.interrupted" and e.reason == "abort"  # type: ignore[attr-defined]
                   for e in events)
        # The session goes on.
        mark = len(device.received)
        await device.listen("detect", text="are you still there")
        await device.wait_json("tts", state="stop", timeout=30, start=mark)
        check_answer_order(device, mark)


async def test_saying_goodbye_ends_the_session_after_the_goodbye_is_spoken(stack: Api) -> None:
    async with XiaozhiDevice(url(stack), version=1, device_id=mac()) as device:
        await device.hello()
        await device.listen("detect", text="再见")
        assert await device.wait_closed(timeout=10) == 1000
        assert device.messages("stt") == [{"type": "stt", "text": "再见"}]
        if device.messages("tts"):  # the goodbye, when the TTS speaks it, comes whole
            check_answer_order(device)
            spoken = [m["text"] for m in device.messages("tts") if m["state"] == "sentence_start"]
            assert spoken == ["Goodbye!"]
    await asyncio.sleep(0.3)  # the edge's close, had it recorded another end
    events = await log_of(stack, device.session_id)
    # Ended once, by the dialogue: the edge closing the socket after it records nothing more.
    assert [e.reason for e in events if e.type == "session.ended"] == ["user_exit"]  # type: ignore[attr-defined]


# --- MCP: the device's tools ---------------------------------------------------------------------


async def test_device_tools_over_mcp(stack: Api) -> None:
    calls: list[dict[str, Any]] = []

    def battery(arguments: dict[str, Any]) -> str:
        calls.append(arguments)
        return "87 percent"

    tools = {
        "self.get_battery_level": ("The battery level.", battery),
        "self.audio_speaker.set_volume": ("Set the volume.", lambda a: "ok"),
        "self.lamp.turn_on": ("Turn the lamp on.", lambda a: "on"),
    }
    async with XiaozhiDevice(url(stack), version=1, device_id=mac(), tools=tools,
                             page_size=2) as device:
        await device.hello(mcp=True)
        events = await until_logged(stack, device.session_id, "session.tools")
        methods = [m.get("method") for m in device.mcp_log]
        assert methods == ["initialize", "notifications/initialized", "tools/list", "tools/list"]
        initialize = device.mcp_log[0]["params"]
        assert initialize["protocolVersion"] == "2024-11-05"
        assert device.mcp_log[2]["params"] == {}
        assert device.mcp_log[3]["params"] == {"cursor": "self.lamp.turn_on"}
        listed = next(e for e in events if e.type == "session.tools")
        assert sorted(t.name for t in listed.tools) == [  # type: ignore[attr-defined]
            "self_audio_speaker_set_volume", "self_get_battery_level", "self_lamp_turn_on"]

        await device.listen("detect", text="please use self_get_battery_level")
        await device.wait_json("tts", state="stop", timeout=30)
        call = next(m for m in device.mcp_log if m.get("method") == "tools/call")
        assert call["params"] == {"name": "self.get_battery_level", "arguments": {}}
        assert calls == [{}]
        spoken = " ".join(m["text"] for m in device.messages("tts")
                          if m["state"] == "sentence_start")
        assert spoken == "The tool said: 87 percent."
        events = await log_of(stack, device.session_id)
        result = next(e for e in events if e.type == "tool.result")
        assert (result.name, result.content, result.is_error) == (  # type: ignore[attr-defined]
            "self_get_battery_level", "87 percent", False)


# --- who the device is ---------------------------------------------------------------------------


async def test_a_bound_device_talks_for_its_owner_and_a_bad_token_is_refused(stack: Api) -> None:
    c, h = stack.client, await stack.user()
    device_id = mac()
    r = await c.post("/api/v1/devices/activation", json={"device_id": device_id, "client_id": "c1"})
    assert r.status_code == 200, r.text
    r = await c.post("/api/v1/devices", headers=h, json={"code": r.json()["code"]})
    assert r.status_code == 201, r.text
    bound = r.json()
    async with XiaozhiDevice(url(stack), device_id=device_id, client_id="c1",
                             token=bound["token"]) as device:
        await device.hello()
        sid = device.session_id
    events = await until_logged(stack, sid, "session.ended")
    started = events[0]
    assert started.type == "session.started"
    assert started.user_id and started.assistant_id == bound["device"]["assistant_id"]  # type: ignore[attr-defined]
    assert started.device_id == device_id.lower()  # type: ignore[attr-defined]

    # A browser passes the same as query parameters.
    async with XiaozhiDevice(url(stack), device_id=device_id, client_id="c1", token=bound["token"],
                             via_query=True) as device:
        await device.hello()
    started = (await until_logged(stack, device.session_id, "session.started"))[0]
    assert started.assistant_id == bound["device"]["assistant_id"]  # type: ignore[attr-defined]

    # The owner locked by an administrator: the device is refused until the unlock.
    await stack.services.accounts.lock(started.user_id)  # type: ignore[attr-defined]
    async with XiaozhiDevice(url(stack), device_id=device_id, client_id="c1",
                             token=bound["token"]) as refused:
        error = await refused.wait_json("error")
        assert error.message["code"] == "account_locked"
        assert await refused.wait_closed() == 4423
    await stack.services.accounts.unlock(started.user_id)  # type: ignore[attr-defined]
    async with XiaozhiDevice(url(stack), device_id=device_id, client_id="c1",
                             token=bound["token"]) as device:
        await device.hello()

    for token, device in ((bound["token"], mac()), ("nonsense", device_id)):
        async with XiaozhiDevice(url(stack), device_id=device, token=token) as refused:
            error = await refused.wait_json("error")
            assert error.message["code"] == "token_invalid"
            assert await refused.wait_closed() == 4401
            assert refused.messages("hello") == []


# --- bad input -----------------------------------------------------------------------------------


async def test_bad_messages_get_errors_and_the_session_goes_on(stack: Api) -> None:
    async with XiaozhiDevice(url(stack), version=2, device_id=mac()) as device:
        await device.hello()
        await device.send("{not json")
        assert (await device.wait_json("error")).message["code"] == "bad_message"
        mark = len(device.received)
        await device.send({"type": "dance"})
        assert (await device.wait_json("error", start=mark)).message["code"] == "unknown_type"
        mark = len(device.received)
        # Legacy and ignored messages: no error.
        await device.send({"type": "iot", "descriptors": []})
        await device.send({"type": "iot", "states": []})
        await device.send({"type": "sentence_end"})
        await device.send(b"\x00\x01")  # not a v2 frame
        assert (await device.wait_json("error", start=mark)).message["code"] == "bad_frame"
        # A JSON message in a v2 binary frame (type 1) works like a text one.
        await device.send(frame_up(2, b'{"type":"listen","state":"detect","text":"still here"}',
                                   kind=1))
        await device.wait_json("tts", state="stop", timeout=30, start=mark)
        assert [m["code"] for m in device.messages("error")] == [
            "bad_message", "unknown_type", "bad_frame"]
        assert device.messages("stt")[-1]["text"] == "still here"


@pytest.mark.parametrize("case", ["binary_first", "not_hello", "bad_version", "bad_hello", "timeout",
                                  "no_device_id"])
async def test_a_bad_start_is_refused_with_a_reason(stack: Api, case: str) -> None:
    device = XiaozhiDevice(url(stack), version=9 if case == "bad_version" else 1, device_id=mac())
    if case == "no_device_id":
        device.device_id = ""
    async with device:
        if case == "binary_first":
            await device.send(b"\x01\x02\x03")
        elif case == "not_hello":
            await device.listen("start")
        elif case == "bad_hello":
            await device.send({"type": "hello", "audio_params": {"format": "opus",
                                                                 "sample_rate": 44100}})
        code = await device.wait_closed(timeout=HELLO_TIMEOUT + 5)
    expected = {"binary_first": ("hello_required", 4400), "not_hello": ("hello_required", 4400),
                "bad_version": ("unsupported_protocol_version", 4400),
                "bad_hello": ("bad_hello", 4422), "timeout": ("hello_timeout", 4408),
                "no_device_id": ("device_id_missing", 4400)}[case]
    assert [m["code"] for m in device.messages("error")] == [expected[0]]
    assert code == expected[1]


async def test_oversized_frames_and_floods_close_and_the_edge_serves_on(stack: Api) -> None:
    limit = stack.services.config.edge.max_frame_bytes
    async with XiaozhiDevice(url(stack), device_id=mac()) as big:
        await big.hello()
        await big.send(b"\x00" * (limit + 1))
        assert await big.wait_closed() == 1009
        assert big.messages("error")[-1]["code"] == "frame_too_large"
    sid = big.session_id
    async with XiaozhiDevice(url(stack), device_id=mac()) as flood:
        await flood.hello()
        assert flood.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):  # closed mid-flood
            for _ in range(stack.services.config.edge.max_messages_per_second * 5):
                await flood.ws.send(b"\x00" * 8)
        assert await flood.wait_closed() == 1008
        assert flood.messages("error")[-1]["code"] == "rate_limited"
    for session, reason in ((sid, "frame_too_large"), (flood.session_id, "rate_limited")):
        events = await until_logged(stack, session, "session.ended")
        assert events[-1].type == "session.ended" and events[-1].reason == reason  # type: ignore[attr-defined]
    async with XiaozhiDevice(url(stack), version=3, device_id=mac()) as good:
        await good.hello()
        await good.listen("detect", text="hello again")
        assert (await good.wait_json("stt")).message["text"] == "hello again"


# --- the benchmark ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_bench_edge_prints_measured_numbers() -> None:
    done = await asyncio.to_thread(vagent, "bench", "edge", "--sessions", "2", timeout=240)
    text = done.stdout
    assert done.returncode == 0, (text, done.stderr[-2000:])
    assert "2 concurrent, 2 connections held, 2 answered" in text, text
    assert "ASR moonshine" in text
    p50, p95 = (float(v) for v in re.search(r"p50 (\d+) ms\s+p95 (\d+) ms", text).groups())  # type: ignore[union-attr]
    assert 0 < p50 <= p95 < 30_000
    cpu = re.search(r"server CPU\s+([\d.]+) s\s+([\d.]+) s per session", text)
    assert cpu is not None and float(cpu.group(1)) > 0, text
    rss = re.search(r"idle (\d+) MiB, peak (\d+) MiB,\s+([\d.-]+) MiB per session", text)
    assert rss is not None and int(rss.group(2)) >= int(rss.group(1)) > 0, text
    assert "error" not in text


@pytest.mark.slow
async def test_bench_edge_with_cloud_stand_ins_prints_vagents_own_cost() -> None:
    done = await asyncio.to_thread(vagent, "bench", "edge", "--providers", "cloud",
                                   "--transport", "ws", "--sessions", "2", "--listen", "1",
                                   timeout=240)
    text = done.stdout
    assert done.returncode == 0, (text, done.stderr[-2000:])
    assert "(/ws, Opus; cloud providers)" in text and "2 concurrent, 2 connections held, 2 answered" in text
    assert "ASR deepgram stand-in" in text and "TTS elevenlabs stand-in" in text, text
    p50 = float(re.search(r"first audio\s+p50 (\d+) ms", text).group(1))  # type: ignore[union-attr]
    added = re.search(r"added by vagent\s+p50 (-?\d+) ms\s+p95 (-?\d+) ms\s+\(over the stand-ins' 450 ms\)",
                      text)
    assert added is not None and float(added.group(1)) == p50 - 450, text
    # The stand-ins' delays are a floor the answer cannot beat.
    assert p50 >= 450, text
    listening = re.search(r"listening\s+([\d.]+) % of a core per session;\s+a turn ([\d.]+) s of CPU", text)
    assert listening is not None and float(listening.group(1)) > 0 and float(listening.group(2)) > 0, text
    assert "error" not in text


# --- the pieces ----------------------------------------------------------------------------------


def test_framing_matches_the_firmware() -> None:
    payload = bytes(range(40))
    for version in (1, 2, 3):
        wire = frame_up(version, payload, timestamp=1234)
        frame = framing.unpack(version, wire)
        assert frame.payload == payload and frame.kind == framing.OPUS
        assert framing.pack(version, payload, 1234) == wire
    assert framing.unpack(2, frame_up(2, payload, timestamp=1234)).timestamp == 1234
    assert framing.unpack(3, frame_up(3, b"{}", kind=1)).kind == framing.JSON
    for version, bad in ((2, b"\x00" * 10), (2, frame_up(2, payload)[:-1]), (3, b"\x00\x00\x00\x05ab"),
                         (3, b"\x07\x00\x00\x01a"), (1, b"")):
        with pytest.raises(framing.FrameError):
            framing.unpack(version, bad)


def test_the_hello_says_whether_the_device_cancels_its_echo() -> None:
    stock = {"type": "hello", "features": {"aec": True, "mcp": True}}  # the firmware's own hello
    assert parse_hello(stock, None).echo_cancelled is True
    assert parse_hello({"type": "hello", "features": {"aec": False}}, None).echo_cancelled is False
    assert parse_hello({"type": "hello", "features": {"mcp": True}}, None).echo_cancelled is None
    assert parse_hello({"type": "hello"}, None).echo_cancelled is None


def test_wake_words_emotions_and_tool_names() -> None:
    assert after_wake_word("你好小智") == ""
    assert after_wake_word("你好，小智！今天天气怎么样") == "今天天气怎么样"
    assert after_wake_word("Hi, Xiaozhi. What time is it?") == "What time is it?"
    assert after_wake_word("hi xiaozhinho") is None
    assert after_wake_word("what time is it") is None
    assert after_wake_word("hey vagent, what time is it") is None
    assert after_wake_word("hey vagent, what time is it", ["hey vagent"]) == "what time is it"
    assert emotion_of("Great news 😆!") == ("😆", "laughing")
    assert emotion_of("plain text") == ("🙂", "happy")
    assert llm_name("self.audio_speaker.set_volume") == "self_audio_speaker_set_volume"
