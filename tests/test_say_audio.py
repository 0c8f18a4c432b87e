"""`vagent say --audio FILE` on a real stack (NATS, the ASR, the dialogue with an echoing LLM,
the TTS), run as a user runs it: the recorded question streamed in, its transcript and the
answer printed, the spoken answer written as a WAV; files that are no speech refused before
anything is published."""

from __future__ import annotations

import asyncio
import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from bus.client import Bus, Message
from bus.log import load
from bus.server import EmbeddedServer
from bus.subjects import audio_in
from schemas import SessionStarted
from tests.api_harness import Api
from tests.fixtures.audio import HERE, has_key_words, pcm, resample
from tests.procs import vagent

pytestmark = [pytest.mark.stack("asr", "dialogue", "tts"), pytest.mark.slow]


async def say(nats: EmbeddedServer, *args: str) -> subprocess.CompletedProcess[str]:
    # A wait, not a speed goal: the file streams at real time and the answer is spoken so too.
    return await asyncio.to_thread(vagent, "say", *args, "--nats", nats.url, timeout=240)


def transcript(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("you> ")]
    assert len(lines) == 1, stdout
    return lines[0].removeprefix("you> ")


async def test_a_recorded_question_is_transcribed_answered_and_spoken(
        stack: Api, module_nats: EmbeddedServer, tmp_path: Path) -> None:
    answer_wav = tmp_path / "answer.wav"
    done = await say(module_nats, "--audio", str(HERE / "what_time.wav"), "--out", str(answer_wav))
    assert done.returncode == 0, done.stderr
    said = transcript(done.stdout)
    assert has_key_words("what_time", said)
    assert f"You said: {said}." in done.stdout  # the echo LLM's answer, streamed
    session = re.search(r"session (say-\S+)", done.stderr)
    assert session, done.stderr  # a new session, named on stderr
    entries, _ = await load(stack.services.bus, "session", session.group(1))
    assert "tts.stopped" in [e.event.type for e in entries if e.event is not None]
    with wave.open(str(answer_wav)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    seconds = len(samples) / 16000
    assert 1.0 < seconds < 15.0  # "You said: What time is it?" spoken, not a click or a loop
    assert np.sqrt(np.mean(samples ** 2)) > 300  # a voice, not silence


async def test_a_44khz_stereo_recording_is_converted(stack: Api, module_nats: EmbeddedServer,
                                                      tmp_path: Path) -> None:
    stereo = tmp_path / "kitchen_44k_stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(resample(pcm("kitchen_lights"), 44100, "stereo"))
    done = await say(module_nats, "--audio", str(stereo), "--session", "say-audio-stereo")
    assert done.returncode == 0, done.stderr
    said = transcript(done.stdout)
    assert has_key_words("kitchen_lights", said)
    assert f"You said: {said}." in done.stdout


async def test_a_session_begun_in_text_is_spoken_to_in_its_own_formats(
        stack: Api, module_nats: EmbeddedServer, tmp_path: Path) -> None:
    """A session `vagent say TEXT` began negotiated no audio: the defaults (Opus both ways)
    hold, so the recording goes in as Opus and the answer comes back as Opus."""
    sid = "say-audio-after-text"
    typed = await say(module_nats, "hello there", "--session", sid)
    assert typed.returncode == 0 and "You said: hello there." in typed.stdout, typed.stderr
    answer_wav = tmp_path / "answer.wav"
    done = await say(module_nats, "--audio", str(HERE / "weather_paris.wav"), "--session", sid,
                     "--out", str(answer_wav))
    assert done.returncode == 0, done.stderr
    said = transcript(done.stdout)
    assert has_key_words("weather_paris", said) and f"You said: {said}." in done.stdout
    entries, _ = await load(stack.services.bus, "session", sid)
    started = [e.event for e in entries if isinstance(e.event, SessionStarted)]
    assert len(started) == 1 and started[0].audio_in is None  # the text session's own start
    with wave.open(str(answer_wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    assert len(samples) > 16000 and np.sqrt(np.mean(samples ** 2)) > 300


async def test_files_that_are_no_speech_are_refused_before_anything_is_published(
        stack: Api, module_nats: EmbeddedServer, tmp_path: Path) -> None:
    bus: Bus = stack.services.bus
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    long = tmp_path / "long.wav"
    with wave.open(str(long), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(8000 * 2 * 31))
    frames: list[bytes] = []

    async def heard(msg: Message) -> None:
        frames.append(msg.data)

    for i, (path, why) in enumerate([(text, "not a readable WAV"), (empty, "holds no audio"),
                                       (long, "longer than 30 s")]):
        sid = f"say-audio-bad-{i}"
        sub = await bus.subscribe(audio_in(sid), heard)
        try:
            await bus.flush()
            done = await say(module_nats, "--audio", str(path), "--session", sid)
            await bus.flush()
        finally:
            await sub.stop()
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and why in done.stderr, done.stderr
        assert done.stdout == ""
        entries, _ = await load(bus, "session", sid)
        assert entries == []  # no session.started
    assert frames == []
    both = await say(module_nats, "hello", "--audio", str(HERE / "what_time.wav"))
    assert both.returncode == 2 and "one of the two" in both.stderr


async def test_a_new_session_talks_to_the_assistant_and_in_the_language_named(
        stack: Api, module_nats: EmbeddedServer) -> None:
    headers = await stack.user()
    r = await stack.client.post("/api/v1/assistants", headers=headers,
                                json={"name": "小助手", "language": "zh"})
    assert r.status_code == 201, r.text
    mandarin = r.json()["assistant_id"]
    owner = (await stack.client.get("/api/v1/me", headers=headers)).json()["user_id"]
    done = await say(module_nats, "你好", "--session", "say-zh-assistant", "--assistant", mandarin)
    assert done.returncode == 0, done.stderr
    entries, _ = await load(stack.services.bus, "session", "say-zh-assistant")
    started = entries[0].event
    assert isinstance(started, SessionStarted)
    assert (started.assistant_id, started.user_id) == (mandarin, owner)  # listed as the owner's
    hinted = await say(module_nats, "你好", "--session", "say-zh-hint", "--language", "zh")
    assert hinted.returncode == 0, hinted.stderr
    entries, _ = await load(stack.services.bus, "session", "say-zh-hint")
    assert isinstance(entries[0].event, SessionStarted) and entries[0].event.language == "zh"


async def test_an_unknown_assistant_or_language_is_refused_before_anything_is_said(
        stack: Api, module_nats: EmbeddedServer) -> None:
    done = await say(module_nats, "hello", "--session", "say-nobody", "--assistant", "01NOBODY")
    assert done.returncode == 1 and "no assistant 01NOBODY" in done.stderr, done.stderr
    entries, _ = await load(stack.services.bus, "session", "say-nobody")
    assert entries == []
    done = await say(module_nats, "hello", "--language", "fr")
    assert done.returncode == 2 and "'fr' is not one of 'en', 'zh'" in done.stderr, done.stderr
