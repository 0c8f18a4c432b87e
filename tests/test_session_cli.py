"""`vagent sessions`, `vagent session show`, `vagent session export`: the commands, as a user
runs them, on a session with a greeting, a tool call, a voice turn with barge-in, a turn
interrupted by the next input, an error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import wave
from pathlib import Path

import msgspec
import numpy as np
import pytest

from bus.blobs import put_pcm
from bus.client import Bus
from bus.server import EmbeddedServer
from cli.sessions import bar, parse_since, summary
from projections.runtime import ProjectionService
from schemas import (
    AssistantCreated,
    AssistantSentence,
    SessionStarted,
    SpeechIgnored,
    SpeechStopped,
    TtsSentence,
    TtsStopped,
    TurnEnd,
    TurnPaused,
    TurnResumed,
    TurnSettings,
    UserRegistered,
    new_id,
)
from tests.fixtures.audio import pcm
from tests.procs import vagent
from tests.test_read_models import publish_all, rich_session


def test_bars_and_since() -> None:
    assert bar(100, 100, width=4) == "████"
    assert bar(50, 100, width=4) == "██"
    assert bar(30, 100, width=4) == "█▎"  # 1.2 blocks: one and a quarter (in eighths, rounded)
    assert bar(0, 100) == "" and bar(5, 0) == ""
    assert parse_since("2h", now=10_000.0) == int((10_000 - 7200) * 1e9)
    assert parse_since("2025-01-31") is not None and parse_since(None) is None
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_a_speech_stopped_line_says_why_the_utterance_ended_then() -> None:
    def line(end: TurnEnd | None) -> str:
        return summary(SpeechStopped(session_id="s", audio_ms=3500, duration_ms=1000, end=end))

    assert "end=model p=0.97 after 224 ms silence" in line(TurnEnd(by="model", probability=0.9712,
                                                                   silence_ms=224))
    assert "end=max_wait p=0.12 after 2016 ms silence" in line(
        TurnEnd(by="max_wait", probability=0.12, silence_ms=2016))
    assert "end=silence after 416 ms silence" in line(TurnEnd(by="silence", silence_ms=416))
    assert line(TurnEnd(by="manual")).startswith("end=manual after 0 ms silence audio_ms=3500")
    assert "end=" not in line(None)  # logs from before the turn model


def tone(rate: int, ms: int) -> bytes:
    """What the assistant said, as far as this test cares: 440 Hz at half scale."""
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * 440 * t) * 16000).astype("<i2").tobytes()


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a thread: this test's loop serves the read models meanwhile."""
    return await asyncio.to_thread(vagent, *args)


ASSISTANT = "Kitchen helper"


@pytest.fixture
async def recorded(bus: Bus) -> tuple[str, str]:
    """A rich session of a new user with an assistant of theirs; (session id, email)."""
    uid, sid = new_id(), "cli" + new_id()
    email = f"{uid.lower()}@example.com"
    await bus.publish(UserRegistered(user_id=uid, email=email))
    aid = "as" + sid
    await bus.publish(AssistantCreated(assistant_id=aid, owner_id=uid, name=ASSISTANT,
                                       turn=TurnSettings(complete_hold_ms=250, echo="on")))
    events = rich_session(sid, uid)
    # Its assistant, and a latency measured as the dialogue measures it (not a round number).
    events = [msgspec.structs.replace(e, assistant_id=aid) if isinstance(e, SessionStarted)
              else msgspec.structs.replace(e, ttfs_ms=90.34231099) if isinstance(e, AssistantSentence)
              and e.ttfs_ms else e for e in events]
    # A cough over the first answer paused it 300 ms in (1.63 s), for 640 ms, and it resumed.
    said = next(i for i, e in enumerate(events) if isinstance(e, TtsSentence))
    turn, ts = events[said].turn_id, events[said].ts - 1_000_000  # tts.started's
    events[said + 1:said + 1] = [
        TurnPaused(session_id=sid, turn_id=turn, ts=ts + 300_000_000),
        SpeechIgnored(session_id=sid, turn_id=turn, reason="noise", text="Uh?", speech_ms=480,
                      ts=ts + 900_000_000),
        TurnResumed(session_id=sid, turn_id=turn, reason="no_words", paused_ms=640,
                    ts=ts + 940_000_000)]
    stopped = next(e for e in events if isinstance(e, SpeechStopped))
    assert stopped.audio is not None
    await put_pcm(bus, stopped.audio.name, pcm("what_time"))
    answer = next(e for e in events if isinstance(e, TtsStopped) and e.audio is not None)
    assert answer.audio is not None
    await put_pcm(bus, answer.audio.name, tone(answer.audio.sample_rate, answer.spoken_ms),
                  sample_rate=answer.audio.sample_rate)
    await publish_all(bus, events)
    return sid, email


async def test_show_prints_the_timeline_with_latency_bars(recorded: tuple[str, str],
                                                          nats_server: EmbeddedServer) -> None:
    sid, _ = recorded
    shown = vagent("session", "show", sid, "--nats", nats_server.url)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"session {sid}" in out and "ended" in out and "user_exit" in out
    assert "transcript.final" in out and "t2" in out  # events numbered by turn
    assert "turn 1 (typed): 'what time is it?'" in out
    assert "input → first sentence" in out and "198 ms" in out and "█" in out
    assert "end of speech → transcript" in out and "150 ms" in out
    assert "end of speech → first audio" in out and "600 ms" in out
    assert "tool get_time({}) → 12:00" in out
    assert "interrupted (barge_in)" in out and "interrupted (new_input)" in out
    assert "paused by speech over it" in out and "resumed after 640 ms (no_words)" in out
    assert "heard over it, ignored (noise, 480 ms): 'Uh?'" in out
    assert "error llm_unavailable: down" in out
    assert "answer (echo/m, 30+6 tokens): 'It is noon.'" in out
    # Latencies in whole ms, lines within 100 columns.
    assert "ttfs_ms=90\n" in out and "ttft_ms=60\n" in out and "90.34" not in out
    assert f"assistant as{sid}" in out  # no read model running: the id alone
    assert max(len(line) for line in out.splitlines()) <= 100
    wide = vagent("session", "show", sid, "--wide", "--nats", nats_server.url).stdout
    assert max(len(line) for line in wide.splitlines()) > 100

    as_json = vagent("session", "show", sid, "--json", "--nats", nats_server.url)
    body = json.loads(as_json.stdout)
    assert [t["input_text"] for t in body["turns"]][:2] == ["what time is it?", "tell me a story"]
    assert body["turns"][1]["stages_ms"]["end of speech → first audio"] == 600.0
    sentence = next(e for e in body["events"] if e["type"] == "assistant.sentence" and e.get("ttfs_ms"))
    assert sentence["ttfs_ms"] == 90.34231099  # --json: as logged

    # `vagent tail` reads latencies the same way; its --json keeps them as logged.
    subject = f"vagent.session.{sid}.evt.assistant.sentence"
    tailed = vagent("tail", subject, "--from-start", "--limit", "3", "--nats", nats_server.url).stdout
    assert "ttfs_ms=90\n" in tailed and "90.34" not in tailed
    tailed = vagent("tail", subject, "--from-start", "--limit", "3", "--json", "--nats", nats_server.url)
    assert any(json.loads(line).get("ttfs_ms") == 90.34231099 for line in tailed.stdout.splitlines())

    missing = vagent("session", "show", "nosuch" + new_id(), "--nats", nats_server.url)
    assert missing.returncode == 1 and "no session" in missing.stderr


async def test_export_writes_json_lines_and_a_two_channel_wav(recorded: tuple[str, str], tmp_path: Path,
                                                              nats_server: EmbeddedServer) -> None:
    sid, _ = recorded
    lines = vagent("session", "export", sid, "--json", "--nats", nats_server.url).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    assert len(events) == 33 and [e["seq"] for e in events] == sorted(e["seq"] for e in events)

    out = tmp_path / "s.wav"
    done = vagent("session", "export", sid, "--wav", str(out), "--nats", nats_server.url)
    assert done.returncode == 0, done.stderr
    assert "1 user utterance(s)" in done.stdout and "1 spoken answer(s)" in done.stdout
    assert "1 spoken answer(s) have no recording" in done.stdout  # the barged-in turn's
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 16000, 2)
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    # On the session's clock: the speech started 3 s in and lasted 1 s.
    assert abs(len(frames) / 16 - 4000) <= 2
    left, right = frames[:, 0], frames[:, 1]
    original = np.frombuffer(pcm("what_time"), "<i2")
    assert np.array_equal(left[-len(original) - 1:-1], original)  # where it ended, unchanged
    assert not left[:16 * 400].any()
    # The answer, from its tts.started (1.33 s) for its 900 ms, resampled to 16 kHz, silent
    # for the 640 ms it was paused 300 ms in.
    spoken = np.flatnonzero(right)
    assert abs(spoken[0] / 16 - 1330) <= 2 and abs(spoken[-1] / 16 - 2230 - 640) <= 2
    assert not right[16 * 1640:16 * 2260].any() and right[16 * 2280:16 * 2300].any()
    played = np.concatenate([right[16 * 1330:16 * 1620], right[16 * 2280:16 * 2860]])
    assert 0.3 < np.abs(played).mean() / 16000 < 0.9
    assert vagent("session", "export", sid, "--nats", nats_server.url).returncode == 2


async def test_sessions_lists_with_owner_latency_and_filters(recorded: tuple[str, str], bus: Bus,
                                                             data_dir: Path,
                                                             nats_server: EmbeddedServer) -> None:
    sid, email = recorded
    service = ProjectionService(bus, data_dir)
    await service.start()
    try:
        await service.caught_up()
        common = ("--nats", nats_server.url, "--data-dir", str(data_dir))
        listed = await cli("sessions", "--user", email.upper(), *common)
        assert listed.returncode == 0, listed.stderr
        header, _, row = listed.stdout.splitlines()[:3]
        assert header.split()[:3] == ["session", "started", "owner"]
        # Within 100 columns: the long id is cut in its middle, the assistant named.
        assert max(len(line) for line in listed.stdout.splitlines()) <= 100
        short = row.split()[0]
        assert short != sid and short.startswith(sid[:5]) and short.endswith("…" + sid[-6:])
        assert "ids shortened" in listed.stdout
        assert ASSISTANT in row and "user_exit" in row
        assert "464 ms" in row  # median of 328 ms (typed) and 600 ms (voice) to first audio
        wide = (await cli("sessions", "--user", email, "--wide", *common)).stdout.splitlines()[2]
        assert wide.split()[0] == sid and email in wide and f"{ASSISTANT} (as{sid})" in wide
        # With the read models served, `session show` names the user and the assistant too.
        shown = (await cli("session", "show", sid, "--nats", nats_server.url)).stdout
        assert f"user      {email} (" in shown and f"assistant {ASSISTANT} (as{sid})" in shown
        # and the assistant's own turn-taking (the rest is the configuration's).
        assert "turn      complete_hold_ms=250 echo=on (the assistant's settings now)" in shown
        as_json = json.loads((await cli("sessions", "--user", email, "--json", *common)).stdout)
        assert [(r["session_id"], r["turns"], r["transport"]) for r in as_json] == [(sid, 4, "test")]
        assert as_json[0]["assistant_name"] == ASSISTANT
        assert as_json[0]["p50_first_audio_ms"] == 464.0
        none = await cli("sessions", "--user", email, "--since", "1h", *common)  # it was in 2023
        assert "no sessions match" in none.stdout
        other = await cli("sessions", "--assistant", "other" + new_id(), "--json", *common)
        assert other.stdout.strip() == "[]"
        assert (await cli("sessions", "--since", "soon", *common)).returncode == 2
    finally:
        await service.stop()
