"""The tts actor on a real nats-server with the real Piper voice: audio that decodes and
lasts as long as it should, paced frames, sentence order, the quick-reply cache,
interruption, PCM16 sessions, tool steps, a newer turn, and a turn through the dialogue."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest

from actors.runtime import ActorHost
from actors.tts.actor import Tts
from actors.tts.providers import TtsProvider
from bus.blobs import get_blob
from bus.client import Bus, Message, Subscription
from bus.subjects import audio_out
from devservers.echo_llm import OpenAIServer
from devservers.elevenlabs import ElevenLabsServer
from projections.runtime import ProjectionService
from schemas import (
    AssistantCreated,
    AssistantMessage,
    AssistantSentence,
    AudioParams,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    ToolCallRef,
    TtsSentence,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnPaused,
    TurnResumed,
    UserText,
    new_id,
)
from settings.config import Config, parse
from tests.conftest import wait_for

StartTts = Callable[..., Awaitable[Tts]]


@pytest.fixture
async def start_tts(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartTts]:
    hosts: list[ActorHost] = []
    monkeypatch.setattr("actors.tts.actor.Tts.name", "tts_" + new_id())

    async def run(config: Config | None = None) -> Tts:
        host = ActorHost(bus, ["tts"], config)
        await host.start()
        hosts.append(host)
        actor = host.actors[0]
        assert isinstance(actor, Tts)
        return actor

    yield run
    for host in hosts:
        await host.stop()


@dataclass
class Frames:
    """Every frame sent to one session, with the monotonic time it arrived."""

    frames: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    sub: Subscription | None = None

    async def handler(self, msg: Message) -> None:
        self.times.append(time.monotonic())
        self.frames.append(msg.data)

    async def wait(self, count: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                await asyncio.sleep(0.01)

    async def settle(self, quiet: float = 0.5, timeout: float = 30) -> None:
        """Until no frame arrived for `quiet` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                last = self.times[-1] if self.times else time.monotonic()
                if time.monotonic() - last > quiet:
                    return
                await asyncio.sleep(0.05)


async def catch_frames(bus: Bus, session_id: str) -> Frames:
    frames = Frames()
    frames.sub = await bus.subscribe(audio_out(session_id), frames.handler)
    await bus.flush()
    return frames


def decode_opus(packets: list[bytes]) -> np.ndarray:
    """Mono float samples at 48 kHz (the Opus decoder's rate, whatever was encoded)."""
    decoder = av.CodecContext.create("opus", "r")
    out = []
    for packet in packets:
        for frame in decoder.decode(av.Packet(packet)):
            out.append(frame.to_ndarray().reshape(-1, frame.samples)[0])
    return np.concatenate(out) if out else np.zeros(0)


def of_type(events: list[Event], kind: type[Event]) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


# --- the tests -------------------------------------------------------------------------

FRAME_S = 0.06
QUICK = "The quick brown fox jumps over the lazy dog."  # about 2.8 s with the joe voice
LONG = ("Once upon a time, in a quiet village at the edge of a great forest, there lived an old "
        "clockmaker who repaired every clock in the valley and never asked for payment.")


def sentence(sid: str, turn: str, text: str, index: int = 0) -> AssistantSentence:
    return AssistantSentence(session_id=sid, turn_id=turn, text=text, index=index)


def final(sid: str, turn: str, text: str = "") -> AssistantMessage:
    return AssistantMessage(session_id=sid, turn_id=turn, text=text)


def stopped(events: list[Event]) -> list[TtsStopped]:
    return of_type(events, TtsStopped)


async def voices_heard(bus: Bus, assistant_id: str) -> tuple[str, str]:
    """The voice a session of the assistant and a session of nobody's choice are spoken in,
    one sentence each."""
    mine, other = "t" + new_id(), "t" + new_id()
    await bus.publish(SessionStarted(session_id=mine, assistant_id=assistant_id))
    for sid in (mine, other):
        turn = new_id()
        await bus.publish(sentence(sid, turn, "Hello there."))
        await bus.publish(final(sid, turn, "Hello there."))
    voices = []
    for sid in (mine, other):
        events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
        voices.append(of_type(events, TtsStarted)[0].voice)
    return voices[0], voices[1]


async def test_a_sentence_becomes_paced_opus_that_decodes_to_its_length(
        bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, QUICK))
    await bus.publish(final(sid, turn, QUICK))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    await frames.settle(0.2)
    samples = decode_opus(frames.frames)
    seconds = len(samples) / 48000
    assert 2.3 < seconds < 3.5, seconds
    assert len(frames.frames) * FRAME_S == pytest.approx(seconds, abs=0.001)
    assert np.sqrt(np.mean(samples ** 2)) > 0.01  # speech, not silence
    # Paced at real time: all but the lead's worth of frames wait their turn.
    send_time = frames.times[-1] - frames.times[0]
    assert seconds - 0.4 < send_time < seconds + 0.5, (send_time, seconds)
    types = [e.type for e in events]
    assert types.index("tts.started") < types.index("tts.sentence") < types.index("tts.stopped")
    said = of_type(events, TtsSentence)[0]
    assert said.text == QUICK and said.index == 0 and said.offset_ms == 0
    assert abs(said.duration_ms - seconds * 1000) < 61
    stop = stopped(events)[0]
    assert stop.spoken_ms == len(frames.frames) * 60 and stop.turn_id == turn
    # What was heard is kept: the synthesized speech, padded to the frames sent.
    assert stop.audio is not None and stop.audio.name == f"{sid}/out/{turn}.pcm"
    kept = np.frombuffer(await get_blob(bus, stop.audio), dtype="<i2") / 32768
    assert len(kept) == -(-stop.spoken_ms * stop.audio.sample_rate // 1000)
    assert stop.audio.duration_ms == stop.spoken_ms
    spoken = kept[:said.duration_ms * stop.audio.sample_rate // 1000]
    assert np.sqrt(np.mean(spoken ** 2)) > 0.01
    started = of_type(events, TtsStarted)[0]
    assert started.voice == "en_US-joe-medium" and started.causation_id is not None


async def test_sentences_are_spoken_in_order_when_a_later_one_is_ready_first(
        bus: Bus, start_tts: StartTts) -> None:
    tts = await start_tts(parse("[tts]\nparallel = 2\n"))  # both synthesize at once
    finished: list[str] = []
    tts.synthesizer.provider = Recording(tts.provider, finished)
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, QUICK, 0))
    await bus.publish(sentence(sid, turn, "Yes.", 1))
    await bus.publish(final(sid, turn))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    assert finished == ["Yes.", QUICK]  # the short one was synthesized first …
    said = of_type(events, TtsSentence)
    assert [s.text for s in said] == [QUICK, "Yes."]  # … and still spoken second
    first_frames = -(-said[0].duration_ms // 60)
    assert said[1].offset_ms == first_frames * 60
    await frames.settle(0.2)
    assert len(frames.frames) * 60 == stopped(events)[0].spoken_ms
    assert said[1].offset_ms + said[1].duration_ms <= stopped(events)[0].spoken_ms


async def test_a_repeated_sentence_is_served_from_the_cache(bus: Bus, start_tts: StartTts) -> None:
    tts = await start_tts()
    sid = "t" + new_id()
    frames = await catch_frames(bus, sid)
    counts = []
    for _ in range(2):
        turn = new_id()
        await bus.publish(sentence(sid, turn, "Hello! How can I help?"))
        await bus.publish(final(sid, turn))
        await wait_for(bus, sid, lambda ev, t=turn: any(s.turn_id == t for s in stopped(ev)))
        await frames.settle(0.2)
        counts.append(len(frames.frames) - sum(counts))
    assert tts.synthesizer.runs == 1 and tts.cache.hits == 1
    assert counts[0] == counts[1] > 10


async def test_an_interruption_stops_the_sound_within_a_frame(bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, LONG, 0))
    await bus.publish(sentence(sid, turn, "And this one is never heard.", 1))
    await frames.wait(12)  # about 0.6 s into the first sentence
    cut = time.monotonic()
    await bus.publish(TurnInterrupted(session_id=sid, turn_id=turn, reason="barge_in"))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    # A sentence of the interrupted turn that arrives later is dropped.
    await bus.publish(sentence(sid, turn, "Nor this one.", 2))
    await bus.publish(final(sid, turn))
    await asyncio.sleep(0.5)
    late = [t for t in frames.times if t > cut]
    assert not late or late[-1] - cut < FRAME_S + 0.05, late[-1] - cut
    stop = stopped(events)[0]
    full = of_type(events, TtsSentence)[0].duration_ms
    assert 0 < stop.spoken_ms < full / 2
    assert stop.spoken_ms <= len(frames.frames) * 60  # what was sent, less what was not yet heard
    assert stop.audio is not None and stop.audio.duration_ms == stop.spoken_ms  # cut where heard
    events = await wait_for(bus, sid, lambda ev: any(isinstance(e, AssistantMessage) for e in ev))
    assert [s.index for s in of_type(events, TtsSentence)] == [0]
    assert len(stopped(events)) == 1


async def test_a_pause_holds_the_audio_and_it_resumes_from_the_same_frame(
        bus: Bus, start_tts: StartTts) -> None:
    """The same turn spoken twice (the second from the cache: the same audio), the second
    paused for a second mid-sentence: its frames are the first's, none sent while paused,
    and its offsets and spoken_ms leave the pause out."""
    await start_tts()
    sid = "t" + new_id()
    frames = await catch_frames(bus, sid)
    heard = []
    for paused in (False, True):
        turn, first = new_id(), len(frames.frames)
        await bus.publish(sentence(sid, turn, QUICK, 0))
        await bus.publish(sentence(sid, turn, "Yes.", 1))
        if paused:
            await frames.wait(first + 15)  # about 0.9 s in
            await bus.publish(TurnPaused(session_id=sid, turn_id=turn))
            hold = time.monotonic()
            await asyncio.sleep(1.0)
            await bus.publish(final(sid, turn))  # all said while paused: it stays paused
            await asyncio.sleep(0.3)
            await bus.publish(TurnResumed(session_id=sid, turn_id=turn, reason="no_words"))
        else:
            await bus.publish(final(sid, turn))
        events = await wait_for(bus, sid, lambda ev, t=turn: any(s.turn_id == t for s in stopped(ev)))
        await frames.settle(0.2)
        heard.append((frames.frames[first:], frames.times[first:],
                      next(s for s in stopped(events) if s.turn_id == turn),
                      [s for s in of_type(events, TtsSentence) if s.turn_id == turn]))
    (plain, _, plain_stop, plain_said), (held, times, held_stop, held_said) = heard
    assert held == plain  # the same frames, none lost or repeated at the pause
    assert max(b - a for a, b in itertools.pairwise(times)) > 1.0  # the pause …
    assert not [t for t in times if hold + 0.3 < t < hold + 1.2]  # … sent nothing
    assert held_stop.spoken_ms == plain_stop.spoken_ms == len(held) * 60
    assert [(s.index, s.offset_ms) for s in held_said] == [(s.index, s.offset_ms) for s in plain_said]
    assert held_stop.audio is not None and held_stop.audio.duration_ms == held_stop.spoken_ms


async def test_a_paused_turn_still_stops_when_interrupted_or_when_the_session_ends(
        bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    for stop in ("interrupted", "ended"):
        sid, turn = "t" + new_id(), new_id()
        frames = await catch_frames(bus, sid)
        await bus.publish(sentence(sid, turn, LONG, 0))
        await frames.wait(8)
        await bus.publish(TurnPaused(session_id=sid, turn_id=turn))
        await asyncio.sleep(0.3)
        await bus.publish(TurnInterrupted(session_id=sid, turn_id=turn, reason="barge_in")
                          if stop == "interrupted" else SessionEnded(session_id=sid))
        events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
        full = of_type(events, TtsSentence)[0].duration_ms
        assert 0 < stopped(events)[0].spoken_ms <= len(frames.frames) * 60 < full / 2


async def test_an_abort_naming_no_turn_silences_the_session(bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    queued = sentence(sid, turn, "Stored before the abort, handled after it.", 1)
    await bus.publish(sentence(sid, turn, LONG, 0))
    await frames.wait(5)
    await bus.publish(TurnInterrupted(session_id=sid, reason="abort"))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    await bus.publish(queued)  # older than the abort: dropped
    await bus.publish(final(sid, turn))
    await asyncio.sleep(0.5)
    count = len(frames.frames)
    assert count < 20 and stopped(events)[0].spoken_ms < 1000
    events = await wait_for(bus, sid, lambda ev: any(isinstance(e, AssistantMessage) for e in ev))
    assert len(of_type(events, TtsSentence)) == 1 and len(frames.frames) == count


async def test_a_session_that_ended_stops_speaking(bus: Bus, start_tts: StartTts) -> None:
    """The client hung up mid-answer: nobody listens, so the sound stops at once."""
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, LONG, 0))
    await frames.wait(5)
    await bus.publish(SessionEnded(session_id=sid, reason="hangup"))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    await asyncio.sleep(0.3)
    assert len(frames.frames) < 20 and stopped(events)[0].spoken_ms < 1000


async def test_stopping_the_actor_mid_sentence_still_records_tts_stopped(bus: Bus, start_tts: StartTts
                                                                        ) -> None:
    # The fixture gives this test's durable name; this host is started and stopped by hand.
    host = ActorHost(bus, ["tts"])
    await host.start()
    try:
        sid, turn = "t" + new_id(), new_id()
        frames = await catch_frames(bus, sid)
        await bus.publish(sentence(sid, turn, LONG))
        await frames.wait(5)
    finally:
        await host.stop()
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)), timeout=5)
    assert 0 < stopped(events)[0].spoken_ms < 2000


async def test_a_pcm16_session_gets_raw_frames_of_its_size(bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(SessionStarted(session_id=sid, transport="websocket", audio_out=AudioParams(
        format="pcm16", sample_rate=16000, channels=1, frame_duration=20)))
    await bus.publish(sentence(sid, turn, QUICK))
    await bus.publish(final(sid, turn))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    await frames.settle(0.2)
    assert {len(f) for f in frames.frames} == {640}  # 20 ms of 16 kHz mono s16
    pcm = np.frombuffer(b"".join(frames.frames), "<i2")
    assert 2.3 < len(pcm) / 16000 < 3.5
    assert stopped(events)[0].spoken_ms == len(frames.frames) * 20
    send_time = frames.times[-1] - frames.times[0]
    assert send_time > len(pcm) / 16000 - 0.3  # 20 ms frames are paced too


async def test_a_turn_with_a_tool_step_is_one_spoken_turn(bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    await bus.publish(sentence(sid, turn, "Let me check.", 0))
    await bus.publish(AssistantMessage(session_id=sid, turn_id=turn, text="",
                                       tool_calls=[ToolCallRef(call_id="c1", name="get_time")]))
    await asyncio.sleep(1.5)  # the tool runs; the first sentence is over meanwhile
    await bus.publish(sentence(sid, turn, "It is noon.", 1))
    await bus.publish(final(sid, turn, "It is noon."))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    assert len(of_type(events, TtsStarted)) == 1 and len(stopped(events)) == 1
    said = of_type(events, TtsSentence)
    # The second sentence starts where the first ended, or later when a pause came between
    # (how long the first took to play out on a busy machine decides which): never over it.
    assert [s.index for s in said] == [0, 1] and said[1].offset_ms >= said[0].duration_ms
    tts_types = [e.type for e in events if e.type.startswith("tts.")]
    assert tts_types == ["tts.started", "tts.sentence", "tts.sentence", "tts.stopped"]


async def test_a_newer_turn_supersedes_one_still_speaking(bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, first, second = "t" + new_id(), new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, first, LONG))
    await bus.publish(final(sid, first))
    await frames.wait(8)
    await bus.publish(sentence(sid, second, "Sure."))
    await bus.publish(final(sid, second))
    events = await wait_for(bus, sid, lambda ev: len(stopped(ev)) == 2)
    one, two = stopped(events)
    assert one.turn_id == first and one.spoken_ms < of_type(events, TtsSentence)[0].duration_ms
    assert two.turn_id == second
    tts = [(e.type, e.turn_id) for e in events if e.type in ("tts.started", "tts.stopped")]
    assert tts == [("tts.started", first), ("tts.stopped", first),
                   ("tts.started", second), ("tts.stopped", second)]


async def test_a_typed_question_is_answered_aloud(
        bus: Bus, start_tts: StartTts, llm: OpenAIServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """user.text → dialogue (echo LLM) → assistant.sentence → tts → audio, end to end."""
    config = parse(f'[[llm.providers]]\nname = "echo"\nbase_url = "{llm.base_url}"\nmodel = "e"\n')
    monkeypatch.setattr("actors.dialogue.actor.Dialogue.name", "dialogue_" + new_id())
    host = ActorHost(bus, ["dialogue"], config)
    await host.start()
    try:
        await start_tts()
        sid = "t" + new_id()
        frames = await catch_frames(bus, sid)
        # How soon the first audio comes is `vagent bench edge`'s to measure, not a test's.
        await bus.publish(UserText(session_id=sid, text="good morning. how are you"))
        await frames.wait(1)
        events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    finally:
        await host.stop()
    assert [s.text for s in of_type(events, TtsSentence)] == ["You said: good morning.",
                                                             "how are you."]
    assert stopped(events)[0].spoken_ms > 1000


@pytest.fixture
def elevenlabs(monkeypatch: pytest.MonkeyPatch) -> Iterator[ElevenLabsServer]:
    server = ElevenLabsServer(api_key="el-test-key").start()
    monkeypatch.setenv("ELEVENLABS_API_KEY", "el-test-key")  # a key alone selects ElevenLabs
    yield server
    server.stop()


def cloud(server: ElevenLabsServer) -> Config:
    """Settings that send the ElevenLabs voice to the local server."""
    return parse(f'[tts]\nvoice = "voice-1"\n[tts.elevenlabs]\nurl = "{server.base_url}"\n')


async def test_elevenlabs_speaks_through_the_real_sdk(
        bus: Bus, start_tts: StartTts, elevenlabs: ElevenLabsServer) -> None:
    tts = await start_tts(cloud(elevenlabs))
    assert tts.provider.name == "elevenlabs"
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    text = "Hello from a cloud voice."  # 25 characters: 1.0 s of tone
    await bus.publish(sentence(sid, turn, text))
    await bus.publish(final(sid, turn, text))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    await frames.settle(0.2)
    request = elevenlabs.requests[0]
    assert request["voice_id"] == "voice-1" and request["api_key"] == "el-test-key"
    assert request["output_format"] == "pcm_24000" and request["body"]["text"] == text
    assert request["body"]["model_id"] == "eleven_flash_v2_5"
    samples = decode_opus(frames.frames)
    assert len(samples) / 48000 == pytest.approx(1.0, abs=0.061)
    assert np.sqrt(np.mean(samples ** 2)) > 0.05  # the tone came through, odd chunks and all
    assert of_type(events, TtsStarted)[0].voice == "voice-1"


async def test_a_failing_synthesis_is_an_error_event_and_the_turn_goes_on(
        bus: Bus, start_tts: StartTts, elevenlabs: ElevenLabsServer) -> None:
    await start_tts(cloud(elevenlabs))
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    elevenlabs.fail_status = 500
    await bus.publish(sentence(sid, turn, "This one fails.", 0))
    events = await wait_for(bus, sid, lambda ev: any(e.type == "error" for e in ev))
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "tts_failed" and error.turn_id == turn and error.source == "tts"
    elevenlabs.fail_status = None
    await bus.publish(sentence(sid, turn, "This one works.", 1))
    await bus.publish(final(sid, turn))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    assert [s.index for s in of_type(events, TtsSentence)] == [1]
    await frames.settle(0.2)
    assert stopped(events)[0].spoken_ms == len(frames.frames) * 60 > 0


class Recording:
    """A provider that notes the order in which syntheses finish."""

    def __init__(self, inner: TtsProvider, finished: list[str]) -> None:
        self.inner, self.finished = inner, finished
        self.name, self.voice, self.sample_rate = inner.name, inner.voice, inner.sample_rate

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        chunks = [chunk async for chunk in self.inner.stream(text)]
        self.finished.append(text)
        for chunk in chunks:
            yield chunk

    async def close(self) -> None:
        await self.inner.close()


async def test_a_session_speaks_in_its_assistants_voice(
        bus: Bus, start_tts: StartTts, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ElevenLabsServer(api_key="el-test-key").start()
    monkeypatch.setenv("ELEVENLABS_API_KEY", "el-test-key")
    projections = ProjectionService(bus, data_dir)
    await projections.start()
    try:
        aid = new_id()
        await bus.publish(AssistantCreated(assistant_id=aid, owner_id="u1", tts="elevenlabs",
                                           voice="zed-voice"))
        # A key, but the default voice stays local.
        tts = await start_tts(parse(f'[tts]\nprovider = "piper"\n'
                                    f'[tts.elevenlabs]\nurl = "{server.base_url}"\n'))
        assert tts.provider.name == "piper"
        assert await voices_heard(bus, aid) == ("zed-voice", "en_US-joe-medium")
        assert [r["voice_id"] for r in server.requests] == ["zed-voice"]
    finally:
        await projections.stop()
        server.stop()


async def test_a_session_is_spoken_in_its_assistants_language(
        bus: Bus, start_tts: StartTts, data_dir: Path) -> None:
    """zh: Kokoro's Mandarin voice; en: the default voice; auto: each sentence by its script,
    and the turn's recording holds both voices at one rate; an assistant's own voice wins."""
    projections = ProjectionService(bus, data_dir)
    await projections.start()
    try:
        zh, en, auto, own = new_id(), new_id(), new_id(), new_id()
        await bus.publish(AssistantCreated(assistant_id=zh, language="zh"))
        await bus.publish(AssistantCreated(assistant_id=en, language="en"))
        await bus.publish(AssistantCreated(assistant_id=auto, language="auto"))
        await bus.publish(AssistantCreated(assistant_id=own, language="zh", voice="jf_alpha"))
        await start_tts(parse('[tts]\nprovider = "piper"\n'))
        said = {zh: ["你好，很高兴见到你。"], en: ["Hello there."], own: ["好的。"],
                auto: ["好的，没问题。", "Python is a language."]}
        sessions = {}
        for aid, texts in said.items():
            sid, turn = "t" + new_id(), new_id()
            sessions[aid] = sid
            await bus.publish(SessionStarted(session_id=sid, assistant_id=aid))
            for index, text in enumerate(texts):
                await bus.publish(sentence(sid, turn, text, index))
            await bus.publish(final(sid, turn, " ".join(texts)))
        voices = {}
        for aid, sid in sessions.items():
            events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)), timeout=120)
            started = of_type(events, TtsStarted)[0]
            voices[aid] = (started.provider, started.voice)
            stop = stopped(events)[0]
            assert stop.audio is not None and stop.audio.duration_ms == stop.spoken_ms
            if aid == auto:
                # The English sentence, spoken by Piper at its own rate, is in the recording
                # of a turn that began in Kokoro's: resampled to the turn's rate.
                assert stop.audio.sample_rate == 24000
                second = of_type(events, TtsSentence)[1]
                kept = np.frombuffer(await get_blob(bus, stop.audio), dtype="<i2") / 32768
                start = second.offset_ms * 24
                assert np.sqrt(np.mean(kept[start:start + second.duration_ms * 24] ** 2)) > 0.01
                assert second.duration_ms > 1000
        assert voices == {zh: ("kokoro", "jm_kumo"), en: ("piper", "en_US-joe-medium"),
                          auto: ("kokoro", "jm_kumo"), own: ("kokoro", "jf_alpha")}
    finally:
        await projections.stop()


async def test_a_mandarin_sessions_voice_loads_when_it_starts(
        bus: Bus, start_tts: StartTts, data_dir: Path) -> None:
    """Before its first sentence: the model loads while the user speaks, not after."""
    projections = ProjectionService(bus, data_dir)
    await projections.start()
    try:
        zh, en = new_id(), new_id()
        await bus.publish(AssistantCreated(assistant_id=zh, language="zh"))
        await bus.publish(AssistantCreated(assistant_id=en, language="en"))
        tts = await start_tts(parse('[tts]\nprovider = "piper"\n'))
        await bus.publish(SessionStarted(session_id="t" + new_id(), assistant_id=en))
        await bus.publish(SessionStarted(session_id="t" + new_id(), assistant_id=zh))
        async with asyncio.timeout(120):
            while ("kokoro", None) not in tts.voices:
                await asyncio.sleep(0.05)
        assert list(tts.voices) == [("kokoro", None)] and not tts.speakers  # nothing said yet
    finally:
        await projections.stop()
