"""Bounded work per input: long text is cut before synthesis, a turn says at most so
many characters, memory comes back after a long answer, another session is heard meanwhile,
control characters never fail a synthesis, and SIGTERM stops a synthesizing actor at once.

The real Piper voice, on a real nats-server. A provider call over the limit is never passed
on to Piper (Piper takes GBs for such texts whole): it stalls and fails,
as a call of that length would hold the synthesizer."""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors.dialogue.sentences import clip, cut, speakable
from actors.tts.actor import Tts
from actors.tts.providers import TtsProvider
from bus.client import Bus
from bus.server import EmbeddedServer, free_port
from schemas import Error, TtsSentence, TurnInterrupted, new_id
from settings.config import Config, TtsSettings, load
from tests.conftest import wait_for
from tests.procs import Proc
from tests.test_tts import StartTts, catch_frames, final, of_type, sentence, start_tts, stopped

__all__ = ["start_tts"]  # the fixture, shared with test_tts

HELLOS = ("hello " * 1400)[:8000]  # the probe: 8,000 characters, no punctuation
MAX_CHARS, MAX_TURN_CHARS = TtsSettings().max_chars, TtsSettings().max_turn_chars  # the defaults
WS = "w" * 2000


# --- cutting, without a voice ------------------------------------------------------------

def test_a_text_that_fits_is_one_piece_itself() -> None:
    assert cut("The quick brown fox jumps over the lazy dog.", 200) == [
        "The quick brown fox jumps over the lazy dog."]
    assert cut("  padded  ", 200) == ["padded"] and cut(" \n ", 200) == []


def test_long_text_is_cut_at_sentences_then_clauses_then_words_then_length() -> None:
    text = ("Dr. Smith came at 3.14 today. " * 2 + "This sentence is long, with a clause or two, "
            "and then it goes on: and on and on until the very end.")
    pieces = cut(text, 60)
    assert all(len(p) <= 60 for p in pieces)
    # Whole sentences packed while they fit; "Dr." and "3.14" end nothing.
    assert pieces[0] == "Dr. Smith came at 3.14 today. Dr. Smith came at 3.14 today."
    assert pieces[1:] == ["This sentence is long, with a clause or two,",
                          "and then it goes on: and on and on until the very end."]
    words = cut(HELLOS, 200)
    assert all(len(p) <= 200 for p in words) and " ".join(words).split() == HELLOS.split()
    assert all(not p.endswith("hel") for p in words)  # between words, never inside one
    assert cut(WS, 200) == ["w" * 200] * 10  # no boundary at all: by length
    chinese = "你好世界" * 100  # Chinese without punctuation
    assert [len(p) for p in cut(chinese, 150)] == [150, 150, 100]
    sentences = cut("你好世界。再见，朋友们。" * 10, 30)  # whole sentences, packed up to 30
    assert sentences[0] == "你好世界。再见，朋友们。" * 2 + "你好世界。"
    assert all(len(p) <= 30 and p.endswith("。") for p in sentences)
    assert "".join(sentences) == "你好世界。再见，朋友们。" * 10
    assert cut("e\u0301" * 5, 3) == ["e\u0301"] * 5  # an accent stays with its letter


def test_the_turn_limit_keeps_a_start_that_ends_at_a_pause() -> None:
    text = "One. Two three four. Five six seven eight nine."
    assert clip(text, 100, 200) == text
    assert clip(text, 25, 200) == "One. Two three four."
    assert clip(text, 12, 200) == "One."
    assert clip(HELLOS, MAX_TURN_CHARS, MAX_CHARS).split() == HELLOS[:MAX_TURN_CHARS].split()[:-1]
    assert clip(WS, 450, 200) == "w" * 450


def test_control_characters_are_not_spoken() -> None:
    assert speakable("Hello\x00 world,\x07 fine.\x1b[0m") == "Hello world, fine.[0m"
    assert speakable("tab\there\r\nnext\u200b line\u202e\ue000") == "tab here \nnext line"
    assert speakable("a family: 👨\u200d👩\u200d👧") == "a family: 👨\u200d👩\u200d👧"  # joiners stay
    assert cut("\x00\x01", 200) == []


# --- the actor, with the real voice ------------------------------------------------------

@dataclass
class Call:
    text: str
    session: str | None
    start: float
    end: float | None = None


class Calls:
    """The real provider, every call noted with its text and times."""

    def __init__(self, inner: TtsProvider, tts: Tts) -> None:
        self.inner, self.tts = inner, tts
        self.name, self.voice, self.sample_rate = inner.name, inner.voice, inner.sample_rate
        self.calls: list[Call] = []

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        call = Call(text, self._session_of(text), time.monotonic())
        self.calls.append(call)
        if len(text) > MAX_CHARS:
            await asyncio.sleep(60)  # a call this long holds the synthesizer for a long time
            raise RuntimeError(f"{len(text)} characters in one call")
        async for chunk in self.inner.stream(text):
            yield chunk
        call.end = time.monotonic()

    def _session_of(self, text: str) -> str | None:
        for sid, speaker in self.tts.speakers.items():
            if any(text in s.text for turn in speaker.turns for s in turn.sentences):
                return sid
        return None

    async def close(self) -> None:
        await self.inner.close()


def memory_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def reset_peak() -> bool:
    """Start VmHWM (the peak RSS) again from the current RSS; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def synthesized(tts: Tts, sid: str, timeout: float = 240) -> None:
    """Until the session's sentences are all synthesized (they may still be playing)."""
    async with asyncio.timeout(timeout):
        while True:
            speaker = tts.speakers.get(sid)
            sentences = [s for turn in speaker.turns for s in turn.sentences] if speaker else []
            if sentences and all(s.synthesis.done for s in sentences):
                return
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("text", [HELLOS, WS], ids=["8000-hellos", "2000-ws"])
async def test_a_long_text_is_synthesized_in_pieces_and_its_memory_comes_back(
        bus: Bus, start_tts: StartTts, text: str) -> None:
    tts = await start_tts(Config(tts=TtsSettings(max_turn_chars=600)))  # three pieces: a shorter test
    provider = tts.synthesizer.provider = Calls(tts.provider, tts)
    async for _ in tts.provider.stream("Warm up, and load what a first call loads."):
        pass
    gc.collect()
    before = memory_mb()
    peak_known = reset_peak()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, text))
    await bus.publish(final(sid, turn))
    await frames.wait(1, timeout=120)
    await synthesized(tts, sid)
    await asyncio.sleep(0.3)  # the last call's memory trim runs after it
    peak, after = memory_mb("VmHWM"), memory_mb()
    await bus.publish(TurnInterrupted(session_id=sid, turn_id=turn, reason="abort"))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)) and any(
        isinstance(e, Error) for e in ev))

    assert len(provider.calls) >= 3 and all(len(c.text) <= MAX_CHARS for c in provider.calls)
    said = of_type(events, TtsSentence)[0].text
    assert said.split() == " ".join(c.text for c in provider.calls).split() or (
        said == "".join(c.text for c in provider.calls))  # no spaces to cut at: "wwww…"
    assert text.startswith(said)
    error = next(e for e in events if isinstance(e, Error))
    assert error.code == "tts_turn_limit" and error.turn_id == turn and error.source == "tts"
    assert "600 characters" in error.message and f"{len(said)} of the {len(text)}" in error.message
    print(f"RSS {before:.0f} MB before, {after:.0f} MB after, peak {peak:.0f} MB "
          f"({'measured' if peak_known else 'of the whole process'})")
    assert after - before < 150, (before, after)  # was +425 MB for "w" × 2000, never released
    if peak_known:
        assert peak - before < 300, (before, peak)  # was GBs


async def test_the_default_turn_limit_cuts_the_answer_and_says_so(
        bus: Bus, start_tts: StartTts) -> None:
    tts = await start_tts()
    provider = tts.synthesizer.provider = Calls(tts.provider, tts)
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, HELLOS, 0))
    await bus.publish(sentence(sid, turn, "Never said: the turn has said enough.", 1))
    await bus.publish(final(sid, turn))
    await frames.wait(1, timeout=120)
    events = await wait_for(bus, sid, lambda ev: bool(of_type(ev, TtsSentence)))
    await bus.publish(TurnInterrupted(session_id=sid, turn_id=turn, reason="abort"))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    said = of_type(events, TtsSentence)
    assert [s.index for s in said] == [0]
    assert MAX_TURN_CHARS - 6 <= len(said[0].text) <= MAX_TURN_CHARS
    errors = [e for e in events if isinstance(e, Error)]
    assert [e.code for e in errors] == ["tts_turn_limit"]
    assert all(len(c.text) <= MAX_CHARS for c in provider.calls)


async def test_another_session_is_heard_while_a_long_text_is_synthesized(
        bus: Bus, start_tts: StartTts) -> None:
    tts = await start_tts(Config(tts=TtsSettings(max_turn_chars=600)))
    provider = tts.synthesizer.provider = Calls(tts.provider, tts)
    long_sid, short_sid, long_turn = "t" + new_id(), "t" + new_id(), new_id()
    short_frames = await catch_frames(bus, short_sid)
    await bus.publish(sentence(long_sid, long_turn, HELLOS))
    await bus.publish(final(long_sid, long_turn))
    async with asyncio.timeout(60):
        while not provider.calls:
            await asyncio.sleep(0.02)
    asked = time.monotonic()
    short_turn = new_id()
    await bus.publish(sentence(short_sid, short_turn, "Yes, of course."))
    await bus.publish(final(short_sid, short_turn))
    try:
        await short_frames.wait(1, timeout=60)
        waited = time.monotonic() - asked
    finally:
        await bus.publish(TurnInterrupted(session_id=long_sid, turn_id=long_turn, reason="abort"))
    # The short sentence went between two pieces of the long text, not after all of them.
    order = [c.session for c in provider.calls]
    assert order[:3] == [long_sid, short_sid, long_sid], [(c.session, len(c.text)) for c in provider.calls]
    first_piece = provider.calls[0]
    assert first_piece.end is not None
    print(f"first audio of the short sentence after {waited:.2f} s; "
          f"the long text's first piece took {first_piece.end - first_piece.start:.2f} s")
    assert waited < 30
    await wait_for(bus, short_sid, lambda ev: bool(stopped(ev)))


async def test_control_characters_are_dropped_and_the_sentence_is_spoken(
        bus: Bus, start_tts: StartTts) -> None:
    await start_tts()
    sid, turn = "t" + new_id(), new_id()
    frames = await catch_frames(bus, sid)
    await bus.publish(sentence(sid, turn, "Hello\x00 world,\x07 this\x1b is\u200b fine."))
    await bus.publish(final(sid, turn))
    events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)))
    assert not [e for e in events if isinstance(e, Error)]
    assert of_type(events, TtsSentence)[0].text == "Hello world, this is fine."
    assert stopped(events)[0].spoken_ms > 1000 and frames.frames


async def test_sigterm_while_synthesizing_stops_the_actor_at_once(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats", port=free_port())  # its own: a durable "tts"
    server.start()
    proc = Proc(["actor", "run", "tts", "--nats", server.url])
    bus = await Bus.connect(server.url, name="test")
    try:
        await bus.declare()
        proc.wait_for("running", timeout=60)
        sid, turn = "t" + new_id(), new_id()
        frames = await catch_frames(bus, sid)
        await bus.publish(sentence(sid, turn, "Hello there, here is a long one.", 0))
        # Six pieces: synthesized whole, 600 characters went on ~13 s after SIGTERM.
        await bus.publish(sentence(sid, turn, HELLOS[:1000], 1))
        await frames.wait(1, timeout=120)  # the long sentence is being synthesized now
        asked = time.monotonic()
        code = await asyncio.to_thread(proc.stop, signal.SIGTERM, 60)
        took = time.monotonic() - asked
        events = await wait_for(bus, sid, lambda ev: bool(stopped(ev)), timeout=5)
    finally:
        proc.stop(signal.SIGKILL)
        await bus.close()
        server.stop()
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 0, proc.output()
    assert took < 8, proc.output()
    assert 0 < stopped(events)[0].spoken_ms < 5000


def test_the_environment_overrides_the_files_limits(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "vagent.toml"
    path.write_text("[tts]\nmax_chars = 120\nmax_turn_chars = 900\n")
    monkeypatch.setenv("VAGENT_CONFIG", str(path))
    monkeypatch.delenv("VAGENT_TTS_MAX_CHARS", raising=False)
    monkeypatch.setenv("VAGENT_TTS_MAX_TURN_CHARS", "600")
    assert load().tts == TtsSettings(max_turn_chars=600, max_chars=120)
