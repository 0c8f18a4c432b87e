"""Speech over the assistant's speech, on a real NATS with real audio through the ASR actor:
a backchannel or a cough pauses the speaking turn and it resumes, real words interrupt it,
a pause nobody decides in time resumes; and which transcripts are only backchannels."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from actors.asr.actor import Asr
from actors.asr.overlap import Backchannels
from actors.dialogue.history import build_messages
from actors.runtime import ActorHost
from bus.client import Bus
from bus.log import Entry
from devservers.echo_llm import OpenAIServer
from projections.runtime import ProjectionService
from schemas import (
    AssistantCreated,
    AssistantMessage,
    SpeechIgnored,
    SpeechStarted,
    TranscriptFinal,
    TtsSentence,
    TtsStarted,
    TtsStopped,
    TurnInterrupted,
    TurnPaused,
    TurnResumed,
    UserText,
    new_id,
)
from settings.config import BACKCHANNELS, parse
from tests.conftest import wait_for
from tests.fixtures.audio import opus_packets, silence
from tests.test_asr_actor import Start, of, open_session, stream
from tests.test_asr_actor import start_asr as start_asr  # the fixture

CLIPS = Path(__file__).parent / "fixtures" / "overlap"
TEXTS: dict[str, str] = json.loads((CLIPS / "texts.json").read_text(encoding="utf-8"))


def clip(name: str, quiet_ms: int = 0) -> list[bytes]:
    """The clip as a device sends it, with `quiet_ms` more of silence after it."""
    with wave.open(str(CLIPS / f"{name}.wav")) as w:
        return opus_packets(w.readframes(w.getnframes()) + silence(quiet_ms))


async def over_the_assistant(bus: Bus, asr: Asr, name: str, done: type,
                             assistant_id: str | None = None) -> tuple[str, list]:
    """`name` said while a turn of the assistant plays, and the session's events once one
    of `done` is logged."""
    started = await open_session(bus, asr, assistant_id=assistant_id)
    turn = new_id()
    await bus.publish(TtsStarted(session_id=started.session_id, turn_id=turn))
    # Silence enough after it to end an utterance the turn model judges incomplete.
    await stream(bus, started.session_id, clip(name, 2500), speed=10.0)
    events = await wait_for(bus, started.session_id, lambda ev: bool(of(done, ev)), timeout=60)
    return turn, events


# The words, not the clock, decide in these tests: a busy machine's ASR may take seconds.
PATIENT = "[asr.turn]\nfalse_interruption_timeout_ms = 30000\n"


def types(events: list) -> list[str]:
    return [e.type for e in events]


# --- which words are only backchannels ----------------------------------------------------


@pytest.mark.parametrize(("text", "verdict"), [
    ("Mhm.", "backchannel"), ("mhm mhm", "backchannel"), ("Mm-hmm!", "backchannel"),
    ("Uh-huh.", "backchannel"), ("Ah, yeah.", "backchannel"), ("OK, okay.", "backchannel"),
    ("Yeahhh", "backchannel"), ("I see.", "backchannel"),
    ("嗯", "backchannel"), ("嗯嗯。", "backchannel"), ("对对对，好的。", "backchannel"),
    ("好 的", "backchannel"), ("是的是的", "backchannel"), ("对呀。", "backchannel"),
    ("对啊，没错。", "backchannel"), ("对呀，我要去北京", "words"),
    ("", "noise"), ("...", "noise"), ("Uh?", "noise"), ("Um, er.", "noise"), ("I.", "noise"),
    ("Oh, uh.", "noise"), ("Oh, okay.", "backchannel"), ("I want Paris", "words"),
    ("Stop, tell me about Paris.", "words"), ("Yes, tell me more", "words"), ("No.", "words"),
    ("好的，请继续讲巴黎", "words"), ("ok Google", "words"),
])
def test_backchannels_are_judged_by_their_words(text: str, verdict: str) -> None:
    assert Backchannels(BACKCHANNELS).verdict(text) == verdict


def test_the_backchannel_list_is_the_assistants_own() -> None:
    assert Backchannels(["sure thing"]).verdict("Sure thing!") == "backchannel"
    assert Backchannels(["sure thing"]).verdict("Okay.") == "words"  # not on its list
    assert Backchannels(["sure thing"]).verdict("Mhm.") == "noise"  # a filler all the same


# --- on the bus ---------------------------------------------------------------------------


async def test_a_backchannel_over_the_assistant_pauses_it_and_it_resumes(
        bus: Bus, start_asr: Start) -> None:
    turn, events = await over_the_assistant(bus, await start_asr(parse(PATIENT)), "uh_huh_yeah", TurnResumed)
    (paused,) = of(TurnPaused, events)
    (ignored,) = of(SpeechIgnored, events)
    (resumed,) = of(TurnResumed, events)
    assert paused.turn_id == ignored.turn_id == resumed.turn_id == turn
    assert paused.causation_id == of(SpeechStarted, events)[0].id
    assert ignored.reason == "backchannel" and "yeah" in ignored.text.lower(), ignored.text
    assert ignored.speech_ms >= 300
    assert resumed.reason == "backchannel" and resumed.paused_ms > 0
    assert resumed.causation_id == ignored.id
    assert not of(TurnInterrupted, events) and not of(TranscriptFinal, events)
    assert types(events).index("turn.paused") < types(events).index("turn.resumed")


async def test_a_cough_over_the_assistant_pauses_it_and_it_resumes(
        bus: Bus, start_asr: Start) -> None:
    turn, events = await over_the_assistant(bus, await start_asr(parse(PATIENT)), "cough", TurnResumed)
    (ignored,) = of(SpeechIgnored, events)
    (resumed,) = of(TurnResumed, events)
    assert of(TurnPaused, events)[0].turn_id == turn
    assert ignored.reason == "noise" and resumed.reason == "no_words"
    assert not of(TurnInterrupted, events) and not of(TranscriptFinal, events)


async def test_real_words_over_the_assistant_interrupt_it_and_are_the_next_turn(
        bus: Bus, start_asr: Start) -> None:
    turn, events = await over_the_assistant(bus, await start_asr(), "stop_paris", TranscriptFinal)
    (interrupted,) = of(TurnInterrupted, events)
    assert interrupted.turn_id == turn and interrupted.reason == "barge_in"
    order = types(events)
    assert order.index("turn.paused") < order.index("turn.interrupted") < order.index(
        "transcript.final")
    assert not of(TurnResumed, events) and not of(SpeechIgnored, events)
    assert "stop" in of(TranscriptFinal, events)[0].text.lower()


async def test_a_pause_nobody_decides_in_time_resumes_and_later_words_still_interrupt(
        bus: Bus, start_asr: Start) -> None:
    # No time at all to decide: the turn resumes at once; the words then interrupt it.
    asr = await start_asr(parse("[asr.turn]\nfalse_interruption_timeout_ms = 0\n"))
    turn, events = await over_the_assistant(bus, asr, "stop_paris", TranscriptFinal)
    # The first pause's; on a busy machine "Stop," may end an utterance of its own, whose
    # own pause resumes the same way.
    resumed = of(TurnResumed, events)[0]
    assert resumed.reason == "timeout" and resumed.causation_id == of(TurnPaused, events)[0].id
    assert {e.reason for e in of(TurnResumed, events)} == {"timeout"}
    (interrupted,) = of(TurnInterrupted, events)
    assert interrupted.turn_id == turn
    order = types(events)
    assert order.index("turn.paused") < order.index("turn.resumed") < order.index(
        "turn.interrupted") < order.index("transcript.final")


async def test_speech_after_the_words_that_interrupted_a_turn_is_not_over_it_again(
        bus: Bus, start_asr: Start) -> None:
    """Until the turn's `tts.stopped` comes back, the session still sees it playing; the
    overlap says it is over, so a next utterance is a turn of its own, not a second pause."""
    asr = await start_asr(parse(PATIENT))
    started = await open_session(bus, asr)
    overlap = asr.sessions[started.session_id].overlap
    turn = new_id()
    assert not overlap.interrupted(turn)
    speech = new_id()  # the utterance's speech.started
    await overlap.pause(turn, speech, 0)
    assert not overlap.interrupted(turn)  # paused: the words decide
    assert await overlap.settle(speech, turn, "Stop, tell me about Paris.", 900)
    assert overlap.interrupted(turn) and not overlap.interrupted(new_id())
    events = await wait_for(bus, started.session_id, lambda ev: bool(of(TurnInterrupted, ev)))
    assert [e.turn_id for e in of(TurnInterrupted, events)] == [turn]


async def test_mandarin_backchannels_do_not_interrupt(
        bus: Bus, start_asr: Start, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zh assistant's session, heard by whisper: Kokoro's "对，对" is 对对啊 (backchannels),
    its "嗯" nothing at all (noise); neither interrupts."""
    monkeypatch.setenv("VAGENT_DATA_DIR", str(data_dir))  # where whisper's model is assembled
    projections = ProjectionService(bus, data_dir)
    await projections.start()
    try:
        zh = new_id()
        await bus.publish(AssistantCreated(assistant_id=zh, language="zh"))
        asr = await start_asr(parse(PATIENT))
        turn, events = await over_the_assistant(bus, asr, "dui_dui", TurnResumed, zh)
        ignored = of(SpeechIgnored, events)
        assert ignored and {e.reason for e in ignored} == {"backchannel"}, ignored
        assert "对" in ignored[0].text and of(TurnResumed, events)[0].reason == "backchannel"
        assert not of(TurnInterrupted, events) and not of(TranscriptFinal, events)
        turn, events = await over_the_assistant(bus, asr, "en", SpeechIgnored, zh)
        assert of(SpeechIgnored, events)[0].turn_id == turn
        assert not of(TurnInterrupted, events) and not of(TranscriptFinal, events)
    finally:
        await projections.stop()


async def test_a_cough_pauses_the_spoken_answer_which_resumes_and_is_remembered_whole(
        bus: Bus, llm: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """ASR, dialogue (echo LLM) and TTS on the bus: a cough over the answer pauses its audio,
    which then plays to the end; the turn is not interrupted and the history holds it all."""
    for actor in ("asr.actor.Asr", "dialogue.actor.Dialogue", "tts.actor.Tts"):
        monkeypatch.setattr(f"actors.{actor}.name", actor.split(".")[0] + "_" + new_id())
    # No echo to cancel here (nothing plays the answer into the microphone): the canceller,
    # working on the answer as its reference, would only cut into the cough.
    config = parse(f'[[llm.providers]]\nname = "echo"\nbase_url = "{llm.base_url}"\nmodel = "e"\n'
                   + PATIENT + 'echo = "off"\n')
    host = ActorHost(bus, ["asr", "dialogue", "tts"], config)
    await host.start()
    try:
        asr = next(a for a in host.actors if isinstance(a, Asr))
        sid = (await open_session(bus, asr)).session_id
        await bus.publish(UserText(session_id=sid, text=(
            "tell me about the old clockmaker who lived at the edge of the great forest "
            "and repaired every clock in the valley")))
        await wait_for(bus, sid, lambda ev: bool(of(TtsStarted, ev)))
        await stream(bus, sid, clip("cough"), speed=1.0)  # as a microphone sends it
        events = await wait_for(bus, sid, lambda ev: bool(of(TtsStopped, ev)), timeout=60)
    finally:
        await host.stop()
    heard = [e.text for e in of(TranscriptFinal, events)]
    assert [e.reason for e in of(SpeechIgnored, events)] == ["noise"], heard
    assert [e.reason for e in of(TurnResumed, events)] == ["no_words"]
    assert of(TurnPaused, events) and not of(TurnInterrupted, events)
    (answer,) = of(AssistantMessage, events)
    said = of(TtsSentence, events)
    assert not answer.interrupted and " ".join(s.text for s in said) == answer.text
    # Played to its end: the last sentence whole, the pause not counted as audio.
    assert of(TtsStopped, events)[0].spoken_ms >= said[-1].offset_ms + said[-1].duration_ms
    history = build_messages("", [Entry("SESSIONS", n, "", {}, b"", e)
                                  for n, e in enumerate(events)], budget_tokens=10**6)
    assert history[-1] == {"role": "assistant", "content": answer.text}
