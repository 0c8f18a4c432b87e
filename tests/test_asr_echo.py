"""Echo cancelling: the assistant's own voice, heard back through a device's speaker, is taken
out of the inbound audio before the VAD (actors.asr.echo), with WebRTC's AEC3 on real audio."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from actors.asr.echo import TAIL_S, EchoRemover, wanted
from benches.echo import (
    CHUNK,
    FRAME_MS,
    LEAD,
    OUT_RATE,
    assistant_voice,
    db,
    echo_of,
    microphone,
    onsets,
    outbound_frames,
    play,
    samples,
    user_voice,
)
from bus.client import Bus
from bus.subjects import audio_in, audio_out
from schemas import (
    AudioParams,
    Event,
    SessionStarted,
    SpeechIgnored,
    SpeechStarted,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnPaused,
    new_id,
)
from tests import test_asr_actor
from tests.conftest import wait_for
from tests.fixtures.audio import RATE, opus_packets
from tests.test_asr_actor import OPUS_16K, Start, events_of, of

start_asr = test_asr_actor.start_asr  # the same fixture: an ASR actor with a durable of its own

OUT = AudioParams(format="opus", sample_rate=OUT_RATE, channels=1, frame_duration=FRAME_MS)


@pytest.mark.parametrize("delay_ms", [50, 150, 250])
def test_the_assistants_echo_is_taken_out(delay_ms: int) -> None:
    voice = assistant_voice()
    echo = echo_of(voice, delay_ms=delay_ms, gain_db=-10)
    length = len(echo) + RATE  # a second of the tail after the voice
    mic = microphone((0, echo), length=length)
    remover = EchoRemover(OUT)
    out = samples(play(remover, outbound_frames(voice), mic))
    heard = samples(mic)
    # Echo return loss enhancement once the filter has had a second to converge.
    converged = slice(RATE, len(echo))
    erle = db(heard[converged], out[converged])
    assert erle >= 20, f"echo only {erle:.1f} dB quieter"
    assert remover.path.echo is True
    assert onsets(mic) and not onsets(out.astype(np.int16).tobytes())


def test_a_busy_moment_of_the_asr_does_not_lose_the_echo() -> None:
    """The event loop busy for 0.6 s: both streams' frames of that time come in one burst,
    stamped late; the reference stays where the client played it."""
    voice = assistant_voice()
    echo = echo_of(voice, delay_ms=100, gain_db=-10)
    mic = microphone((0, echo), length=len(echo) + RATE)
    out = samples(play(EchoRemover(OUT), outbound_frames(voice), mic, stall=(1.0, 0.6)))
    converged = slice(RATE, len(echo))
    assert db(samples(mic)[converged], out[converged]) >= 20
    assert not onsets(out.astype(np.int16).tobytes())


def test_the_user_speaking_over_the_echo_is_kept() -> None:
    voice = assistant_voice()
    echo = echo_of(voice, delay_ms=100, gain_db=-10)
    user = user_voice()
    at = RATE * 3 // 2
    mic = microphone((0, echo), (at, user), length=len(echo) + RATE)
    out = samples(play(EchoRemover(OUT), outbound_frames(voice), mic))
    span = slice(at, at + len(user))
    # Double talk: the user's voice comes through (at most a few dB down), the echo does not.
    assert db(out[span], user) > -6
    starts = onsets(out.astype(np.int16).tobytes())
    alone = onsets(microphone((at, user), length=len(mic) // 2))[0]
    # Heard where it starts, or soon after (the canceller damps the first syllable a little).
    assert len(starts) == 1 and alone - 100 <= starts[0] <= alone + 500


def test_a_client_that_hears_no_echo_is_left_alone() -> None:
    """A headset, or a client cancelling echo without saying so: the canceller would damp the
    user whenever the assistant speaks (it keeps assuming an echo it cannot find)."""
    voice = assistant_voice()
    user = user_voice()
    at = RATE * 2
    mic = microphone((at, user), length=at + len(user) + RATE // 2)
    remover = EchoRemover(OUT)
    out = samples(play(remover, outbound_frames(voice), mic))
    assert remover.path.echo is False and remover.frames > 0
    span = slice(at, at + len(user))
    assert abs(db(out[span], user)) < 1
    assert onsets(out.astype(np.int16).tobytes()) == onsets(mic)


def test_no_assistant_no_cost() -> None:
    remover = EchoRemover(OUT)
    mic = microphone(length=RATE)
    assert remover.cancel(mic, 1.0) == mic  # nothing played: untouched, no canceller made
    voice = assistant_voice()[:RATE // 2]
    frames = outbound_frames(voice)
    for frame in frames:
        remover.played(frame, 2.0)
    remover.cancel(microphone(length=CHUNK), 2.06)
    used = remover.frames
    assert used > 0
    later = 2.0 + len(frames) * FRAME_MS / 1000 + TAIL_S + 0.5
    chunk = microphone(length=CHUNK, seed=5)
    out = remover.cancel(chunk, later)
    assert out.endswith(chunk) and remover.frames == used  # the tail is over: untouched


def test_who_cancels_the_echo() -> None:
    assert wanted("auto", None) and wanted("auto", False) and not wanted("auto", True)
    assert wanted("on", True) and not wanted("off", None)


# --- on the bus: the ASR actor hears the assistant's audio.out as its reference -------------


def stopped_for(events: list[Event]) -> bool:
    return bool(of(TurnInterrupted, events) or of(TurnPaused, events))


async def speak_and_hear(bus: Bus, asr: object, *, echo_cancelled: bool | None,
                         user_at_ms: int | None = None) -> tuple[str, str]:
    """A session whose client plays the assistant's voice on a speaker and hears it back
    (100 ms later, 10 dB down), the user speaking over it from `user_at_ms` if given; both
    streams paced at real time, as a device sends and receives them."""
    started = SessionStarted(session_id="a" + new_id(), transport="test", audio_in=OPUS_16K,
                             audio_out=OUT, echo_cancelled=echo_cancelled)
    sid = started.session_id
    await bus.publish(started)
    async with asyncio.timeout(10):
        while sid not in asr.sessions:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
    voice = assistant_voice()
    echo = echo_of(voice, delay_ms=100, gain_db=-10)
    sounds = [(0, echo)]
    if user_at_ms is not None:
        sounds.append((RATE * user_at_ms // 1000, user_voice()))
    mic = microphone(*sounds, length=max(at + len(s) for at, s in sounds) + RATE // 2)
    out, inbound = outbound_frames(voice), opus_packets(mic, RATE, FRAME_MS)
    turn = new_id()
    await bus.publish(TtsStarted(session_id=sid, turn_id=turn))
    await bus.flush()
    await asyncio.sleep(0.5)  # the pipeline has read tts.started and listens to audio.out
    step = FRAME_MS / 1000
    timeline = sorted([(max(0.0, (k - LEAD) * step), audio_out(sid), f) for k, f in enumerate(out)]
                      + [((j + 1) * step, audio_in(sid), p) for j, p in enumerate(inbound)])
    began = time.monotonic()
    for at, subject, payload in timeline:
        await asyncio.sleep(max(0.0, began + at - time.monotonic()))
        await bus.publish_core(subject, payload)
    await bus.flush()
    await bus.publish(TtsStopped(session_id=sid, turn_id=turn))
    return sid, turn


async def test_the_assistants_echo_does_not_interrupt_it(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    sid, _ = await speak_and_hear(bus, asr, echo_cancelled=None)  # auto: cancelled here
    await wait_for(bus, sid, lambda ev: bool(of(TtsStopped, ev)))
    await asyncio.sleep(1.5)  # whatever the pipeline still had to say
    events = await events_of(bus, sid)
    assert not stopped_for(events) and not of(TranscriptFinal, events)
    # While AEC3 converges, in the first second, it may let ~200 ms of the echo through for some
    # alignments of the two streams (about one session in ten here): if the VAD opens on it, what
    # it heard has no words and is let go as noise, never a pause or a turn.
    heard = of(SpeechStarted, events)
    assert all(s.audio_ms < 1500 for s in heard)
    assert [i.reason for i in of(SpeechIgnored, events)] == ["noise"] * len(heard)


async def test_without_cancelling_the_echo_interrupts(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    # The client says it cancels echo itself, but its speaker is heard all the same.
    sid, turn = await speak_and_hear(bus, asr, echo_cancelled=True)
    events = await wait_for(bus, sid, stopped_for)
    assert any(e.turn_id == turn for e in of(TurnInterrupted, events) + of(TurnPaused, events))


async def test_the_user_over_the_echo_still_interrupts(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    sid, turn = await speak_and_hear(bus, asr, echo_cancelled=None, user_at_ms=1500)
    events = await wait_for(bus, sid, stopped_for)
    (speech, *_) = of(SpeechStarted, events)
    assert speech.audio_ms >= 1500  # the user, not the echo before
    assert any(e.turn_id == turn for e in of(TurnInterrupted, events) + of(TurnPaused, events))
