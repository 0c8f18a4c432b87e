"""The ASR actor on a real NATS: audio frames in, speech and transcript events out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from actors.asr.actor import Asr
from actors.runtime import ActorHost
from bus.blobs import get_blob
from bus.client import Bus, Message
from bus.log import load
from bus.subjects import audio_in, live
from schemas import (
    AudioParams,
    Error,
    Event,
    ListenStarted,
    ListenStopped,
    SessionEnded,
    SessionStarted,
    SpeechIgnored,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TranscriptPartial,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnPaused,
    decode,
    derived_id,
    new_id,
)
from settings.config import Config
from tests.conftest import wait_for
from tests.fixtures.audio import META, has_key_words, opus_packets, pcm, resample

OPUS_16K = AudioParams(format="opus", sample_rate=16000, channels=1, frame_duration=60)
PCM_48K = AudioParams(format="pcm16", sample_rate=48000, channels=1, frame_duration=20)

Start = Callable[..., Awaitable[Asr]]


@pytest.fixture
async def start_asr(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """An ASR actor of its own (its own durable), stopped after the test."""
    hosts: list[ActorHost] = []
    monkeypatch.setattr(Asr, "name", "asr_" + new_id())

    async def run(config: Config | None = None, **secrets: str) -> Asr:
        for key, value in secrets.items():
            monkeypatch.setenv(key, value)
        host = ActorHost(bus, [Asr], config)
        await host.start()
        hosts.append(host)
        actor = host.actors[0]
        assert isinstance(actor, Asr)
        return actor

    yield run
    for host in hosts:
        await host.stop()


async def open_session(bus: Bus, asr: Asr, params: AudioParams = OPUS_16K,
                       assistant_id: str | None = None) -> SessionStarted:
    started = SessionStarted(session_id="a" + new_id(), transport="test", audio_in=params,
                             assistant_id=assistant_id)
    await bus.publish(started)
    async with asyncio.timeout(10):
        while started.session_id not in asr.sessions:  # the worker has claimed it
            await asyncio.sleep(0.01)
    return started


def frames(name: str, params: AudioParams = OPUS_16K) -> list[bytes]:
    data = pcm(name)
    if params.format == "opus":
        return opus_packets(resample(data, params.sample_rate) if params.sample_rate != 16000
                            else data, params.sample_rate, params.frame_duration)
    data = resample(data, params.sample_rate) if params.sample_rate != 16000 else data
    size = params.sample_rate * 2 * params.channels * params.frame_duration // 1000
    return [data[i:i + size] for i in range(0, len(data), size)]


async def stream(bus: Bus, session_id: str, packets: list[bytes], frame_ms: int = 60,
                 speed: float = 4.0) -> None:
    """Send frames paced against a monotonic clock; `speed` > 1 is faster than real time
    (VAD timing is audio time, so only the wall-clock figures change)."""
    began = time.monotonic()
    for n, packet in enumerate(packets):
        await bus.publish_core(audio_in(session_id), packet)
        await asyncio.sleep(max(0.0, began + (n + 1) * frame_ms / 1000 / speed - time.monotonic()))
    await bus.flush()


async def events_of(bus: Bus, session_id: str) -> list[Event]:
    entries, _ = await load(bus, "session", session_id)
    return [e.event for e in entries if e.event is not None]


def of(kind: type, events: list[Event]) -> list:
    return [e for e in events if isinstance(e, kind)]


async def collect_partials(bus: Bus, session_id: str) -> tuple[list[TranscriptPartial], object]:
    seen: list[TranscriptPartial] = []

    async def on(msg: Message) -> None:
        event = decode(msg.data)
        assert isinstance(event, TranscriptPartial)
        seen.append(event)

    return seen, await bus.subscribe(live(session_id, "transcript.partial"), on)


@pytest.mark.parametrize("params", [OPUS_16K, PCM_48K], ids=["opus16k-60ms", "pcm48k"])
async def test_an_utterance_becomes_speech_events_partials_and_a_final(
        bus: Bus, start_asr: Start, params: AudioParams) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr, params)
    sid = started.session_id
    partials, sub = await collect_partials(bus, sid)
    await stream(bus, sid, frames("kitchen_lights", params), params.frame_duration, speed=1.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(TranscriptFinal, ev)))
    await sub.stop()  # type: ignore[attr-defined]
    meta = META["kitchen_lights"]

    (speech_started,) = of(SpeechStarted, events)
    (speech_stopped,) = of(SpeechStopped, events)
    (final,) = of(TranscriptFinal, events)
    assert [e.type for e in events] == ["session.started", "speech.started", "speech.stopped",
                                        "transcript.final"]
    # Audio time: the codec delays by a few ms at most, the VAD by ~100 ms at the end.
    assert abs(speech_started.audio_ms - meta["speech_start_ms"]) <= 150
    assert abs(speech_stopped.audio_ms - meta["speech_end_ms"]) <= 150
    assert speech_stopped.duration_ms == speech_stopped.audio_ms - speech_started.audio_ms

    assert has_key_words("kitchen_lights", final.text), final.text
    assert final.provider == "moonshine" and final.language == "en"
    assert final.speech_started_ts == speech_started.ts
    assert final.speech_stopped_ts == speech_stopped.ts

    # Ids derive from session.started, causes chain back to it.
    name = Asr.name
    assert speech_started.id == derived_id(started.id, name, 0)
    assert speech_stopped.id == derived_id(started.id, name, 1)
    assert final.id == derived_id(started.id, name, 2)
    assert speech_started.causation_id == started.id
    assert speech_stopped.causation_id == speech_started.id
    assert final.causation_id == speech_stopped.id

    # Partial text was seen live while the user spoke, never in the log.
    assert partials and all(p.causation_id == speech_started.id for p in partials)
    assert partials[0].ts < speech_stopped.ts

    # A complete sentence: the turn model ended it after the short hold, not the long silence.
    end = speech_stopped.end
    assert end is not None and end.by == "model", end
    assert asr.settings.turn.complete_hold_ms <= end.silence_ms < asr.settings.vad.silence_ms

    # The utterance's audio: pre-roll + speech + the silence heard before its end, 16 kHz PCM16.
    ref = speech_stopped.audio
    assert ref is not None and final.audio == ref
    assert (ref.bucket, ref.format, ref.sample_rate) == ("audio", "pcm16", 16000)
    blob = await get_blob(bus, ref)
    assert len(blob) // 32 == ref.duration_ms
    expected = speech_stopped.duration_ms + 256 + end.silence_ms
    assert abs(ref.duration_ms - expected) <= 100

    latency_ms = (final.ts - speech_stopped.ts) / 1e6
    print(f"\n{params.format}@{params.sample_rate}: {final.text!r}; transcript.final "
          f"{latency_ms:.0f} ms after speech.stopped, which came "
          f"{end.silence_ms} ms (audio) after the last word")


async def test_noise_alone_gives_no_turn(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("noise"), speed=10.0)
    await asyncio.sleep(1.0)
    events = await events_of(bus, started.session_id)
    assert [e.type for e in events] == ["session.started"]


async def test_a_filler_is_recorded_but_opens_no_turn(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("short_uh"), speed=10.0)
    events = await wait_for(bus, started.session_id, lambda ev: bool(of(SpeechStopped, ev)))
    await asyncio.sleep(1.0)  # time enough for a transcript, were there one
    events = await events_of(bus, started.session_id)
    texts = [e.text for e in of(TranscriptFinal, events)]
    assert of(SpeechStarted, events) and not texts, texts


async def test_two_utterances_two_finals_in_order(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("what_time") + frames("kitchen_lights"),
                 speed=10.0)
    events = await wait_for(bus, started.session_id, lambda ev: len(of(TranscriptFinal, ev)) == 2)
    first, second = of(TranscriptFinal, events)
    assert has_key_words("what_time", first.text) and has_key_words("kitchen_lights", second.text)
    starts = of(SpeechStarted, events)
    offset = len(pcm("what_time")) // 32
    assert abs(starts[1].audio_ms - offset - META["kitchen_lights"]["speech_start_ms"]) <= 150


async def test_manual_mode_ends_the_utterance_on_listen_stopped(bus: Bus, start_asr: Start
                                                                 ) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    sid = started.session_id
    listen = ListenStarted(session_id=sid, mode="manual")
    await bus.publish(listen)
    await stream(bus, sid, frames("what_time"), speed=10.0)
    await asyncio.sleep(1.0)
    # 1.2 s of trailing silence did not end it: push to talk is still held.
    events = await events_of(bus, sid)
    assert of(SpeechStarted, events) and not of(SpeechStopped, events)
    assert of(SpeechStarted, events)[0].causation_id == listen.id
    await bus.publish(ListenStopped(session_id=sid))
    events = await wait_for(bus, sid, lambda ev: bool(of(TranscriptFinal, ev)))
    (stopped,) = of(SpeechStopped, events)
    assert abs(stopped.audio_ms - META["what_time"]["speech_end_ms"]) <= 150
    assert has_key_words("what_time", of(TranscriptFinal, events)[0].text)


async def test_barge_in_needs_enough_speech_over_the_assistant(bus: Bus, start_asr: Start
                                                                ) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    sid = started.session_id
    turn = new_id()
    await bus.publish(TtsStarted(session_id=sid, turn_id=turn))
    # "Uh." (~0.2 s of speech) while the assistant speaks: heard and recorded, but it does
    # not even pause the assistant, and is no turn.
    await stream(bus, sid, frames("short_uh"), speed=10.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(SpeechIgnored, ev)))
    (ignored,) = of(SpeechIgnored, events)
    assert ignored.reason == "noise" and ignored.turn_id == turn and ignored.speech_ms < 300
    assert not of(TurnPaused, events) and not of(TurnInterrupted, events)
    assert not of(TranscriptFinal, events)
    # A real sentence over the assistant pauses it, then interrupts it, and becomes a turn.
    await stream(bus, sid, frames("kitchen_lights"), speed=10.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(TranscriptFinal, ev)))
    (interrupted,) = of(TurnInterrupted, events)
    assert interrupted.reason == "barge_in" and interrupted.turn_id == turn
    speech = of(SpeechStarted, events)[1]
    assert interrupted.causation_id == speech.id
    types = [e.type for e in events]
    assert types.index("turn.interrupted") < types.index("transcript.final")
    assert has_key_words("kitchen_lights", of(TranscriptFinal, events)[0].text)


async def test_no_barge_in_once_the_assistant_stopped(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    sid = started.session_id
    turn = new_id()
    await bus.publish(TtsStarted(session_id=sid, turn_id=turn))
    await bus.publish(TtsStopped(session_id=sid, turn_id=turn))
    await stream(bus, sid, frames("what_time"), speed=10.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(TranscriptFinal, ev)))
    assert not of(TurnInterrupted, events)


async def test_bad_frames_become_an_error_event_and_audio_goes_on(bus: Bus, start_asr: Start
                                                                  ) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    sid = started.session_id
    packets = frames("what_time")
    await stream(bus, sid, [b"", b"\xff\xff\xff", *packets], speed=10.0)
    events = await wait_for(bus, sid, lambda ev: bool(of(TranscriptFinal, ev)))
    (error,) = of(Error, events)  # two bad frames, one report (rate-limited)
    assert error.code == "bad_audio" and error.source == Asr.name and "empty" in error.message
    assert has_key_words("what_time", of(TranscriptFinal, events)[0].text)


async def test_session_ended_drops_the_pipeline(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    sid = started.session_id
    await bus.publish(SessionEnded(session_id=sid))
    async with asyncio.timeout(5):
        while sid in asr.sessions:
            await asyncio.sleep(0.01)
    await stream(bus, sid, frames("what_time"), speed=20.0)
    await asyncio.sleep(0.5)
    assert [e.type for e in await events_of(bus, sid)] == ["session.started", "session.ended"]
