"""`vagent say --audio FILE`: a recorded utterance streamed into a session as a live client
streams its microphone (frames of the session's `audio_in` on `audio.in`, at real time),
the transcript and the streamed answer printed, the spoken answer optionally kept as a WAV.

The file is read and converted (16 kHz mono) before anything is published. A new session
negotiates raw PCM16 both ways; a session given by id is spoken to in its own formats."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from audio.decode import RATE, AudioDecodeError, Decoder
from audio.encode import DEFAULT_OUT, AudioEncoder
from audio.wavfile import write_wav
from bus.client import Bus, Message
from bus.log import last_event
from bus.subjects import audio_in, audio_out, session_all
from cli.say import ASSISTANT, SYSTEM, YOU, Answer, Opening, SayError, start_session_if_new
from hosting.logs import console
from schemas import (
    AudioParams,
    DecodeError,
    SessionStarted,
    SpeechStarted,
    TranscriptFinal,
    TtsStarted,
    TtsStopped,
    decode,
)

MAX_SECONDS = 30.0  # the VAD cuts an utterance at 30 s by default: one file, one turn
PCM_IN = AudioParams(format="pcm16", sample_rate=RATE, channels=1, frame_duration=20)
PCM_OUT = AudioParams(format="pcm16", sample_rate=RATE, channels=1, frame_duration=60)
# Before the speech: the ASR subscribes to a new session's audio when it reads the session's
# start, and a microphone never opens on the first word anyway.
LEAD_MS = 1000
# After it: well over the VAD's silence hold (400 ms by default), so silence ends the turn.
TRAIL_MS = 1500
NO_SPEECH_GRACE_S = 5.0  # after the last frame, for a busy ASR to report the speech it heard


def _silence(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


async def _session_params(bus: Bus, session_id: str,
                          opening: Opening) -> tuple[AudioParams, AudioParams]:
    """The session's audio formats (in, out), starting it with raw PCM16 if it is new."""
    await start_session_if_new(bus, session_id, "cli", opening=opening, audio_in=PCM_IN,
                               audio_out=PCM_OUT)
    started = await last_event(bus, "session", session_id, "session.started")
    if not isinstance(started, SessionStarted):
        raise SayError(f"session {session_id} has no readable session.started")
    return started.audio_in or AudioParams(), started.audio_out or DEFAULT_OUT


async def _stream(bus: Bus, subject: str, frames: list[bytes], frame_ms: int) -> None:
    """Frames at real time, on a clock of their own (a late frame does not delay the rest)."""
    began = time.monotonic()
    for i, frame in enumerate(frames):
        ahead = began + i * frame_ms / 1000 - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        await bus.publish_core(subject, frame)


async def say_audio(bus: Bus, session_id: str, speech: bytes, *, out: Path | None = None,
                    timeout: float = 120.0, opening: Opening = SYSTEM) -> str:
    """Stream `speech` (16 kHz mono PCM16) into the session, print `you> transcript` and
    `assistant> ` with the streamed answer; with `out`, write the turn's spoken answer there
    (16 kHz mono WAV). Returns the transcript."""
    params_in, params_out = await _session_params(bus, session_id, opening)
    encoder = AudioEncoder(params_in)
    frames = encoder.encode(_silence(LEAD_MS) + speech + _silence(TRAIL_MS), RATE)
    frames += encoder.end_segment()
    try:
        decoder = Decoder(params_out.format, params_out.sample_rate, params_out.channels)
    except AudioDecodeError as exc:
        raise SayError(f"the session's audio_out cannot be decoded: {exc}") from None
    answer = Answer(ASSISTANT)
    heard = asyncio.Event()  # speech.started: the ASR hears the stream
    transcript: asyncio.Future[TranscriptFinal] = asyncio.get_running_loop().create_future()
    spoken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    speaking = False
    voice = bytearray()
    out_subject = audio_out(session_id)

    async def on_message(msg: Message) -> None:
        nonlocal speaking
        if msg.subject == out_subject:
            if speaking:
                try:
                    voice.extend(decoder.decode(msg.data))
                except AudioDecodeError:
                    pass  # a lost frame is a gap in the recording, not a failure
            return
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        if isinstance(event, SpeechStarted):
            heard.set()
        elif isinstance(event, TranscriptFinal) and not transcript.done():
            answer.turn_id = event.id  # a turn is named after its input
            console.line(YOU + event.text)
            transcript.set_result(event)
        elif isinstance(event, TtsStarted) and event.turn_id == answer.turn_id:
            speaking = True
        elif isinstance(event, TtsStopped) and event.turn_id == answer.turn_id and speaking:
            speaking = False
            if not spoken.done():
                spoken.set_result(None)
        answer.feed(event)

    # Audio out is live only; the events are read as JetStream stores them.
    sub = await bus.subscribe(session_all(session_id), on_message)
    sender: asyncio.Task[None] | None = None
    try:
        await bus.flush()
        sender = asyncio.create_task(_stream(bus, audio_in(session_id), frames,
                                             params_in.frame_duration))
        deadline = time.monotonic() + timeout
        first: set[asyncio.Future[Any]] = {sender, transcript}
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not transcript.done():
            await sender  # every frame out (a failed publish raises here)
            try:
                await asyncio.wait_for(heard.wait(), NO_SPEECH_GRACE_S)
            except TimeoutError:
                raise SayError("no speech heard: is there speech in the file, and is the asr "
                               "actor running? (`vagent health` tells)") from None
            try:
                await asyncio.wait_for(asyncio.shield(transcript), deadline - time.monotonic())
            except TimeoutError:
                raise SayError(f"no transcript in {timeout:.0f}s (speech without words is "
                               "not a turn)") from None
        await answer.wait(max(1.0, deadline - time.monotonic()))
        if out is not None:
            try:
                await asyncio.wait_for(asyncio.shield(spoken), max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                raise SayError(f"the answer was not spoken in {timeout:.0f}s: is the tts actor "
                               "running? (`vagent health` tells)") from None
            voice.extend(decoder.flush())
            if not voice:
                raise SayError("the answer was spoken without audio")
            write_wav(out, bytes(voice))
        return transcript.result().text
    finally:
        if sender is not None and not sender.done():
            sender.cancel()  # the rest is silence: the turn is over
        await sub.stop()
