"""Where the ASR actor ends an utterance, on a real NATS with real audio: by the turn
model's judgement (the default) or by silence alone (`[asr.turn] detector`)."""

from __future__ import annotations

import pytest

from actors.asr import turn_model
from bus.client import Bus
from schemas import SpeechStarted, SpeechStopped, TranscriptFinal
from settings.config import AsrSettings, Config, TurnConfig
from tests.conftest import wait_for
from tests.fixtures.audio import normalized
from tests.test_asr_actor import Start, frames, of, open_session, start_asr, stream
from tests.test_turn_model import PAUSED

__all__ = ["start_asr"]  # the fixture, shared with the ASR actor's tests


async def test_a_pause_where_the_sentence_cannot_end_does_not_end_the_turn(
        bus: Bus, start_asr: Start) -> None:
    asr = await start_asr()
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("turns/flight_paused"), speed=8.0)
    events = await wait_for(bus, started.session_id, lambda ev: bool(of(TranscriptFinal, ev)))
    (_,) = of(SpeechStarted, events)
    (stopped,) = of(SpeechStopped, events)
    (final,) = of(TranscriptFinal, events)
    assert stopped.end is not None and stopped.end.by in ("model", "max_wait")
    assert stopped.end.probability is not None
    assert abs(stopped.audio_ms - PAUSED["speech_end_ms"]) <= 150
    text = normalized(final.text)
    assert "flight" in text and "friday" in text, final.text


async def test_silence_alone_cuts_the_same_sentence_in_two(bus: Bus, start_asr: Start) -> None:
    asr = await start_asr(Config(asr=AsrSettings(turn=TurnConfig(detector="silence"))))
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("turns/flight_paused"), speed=8.0)
    events = await wait_for(bus, started.session_id, lambda ev: len(of(TranscriptFinal, ev)) == 2)
    stops = of(SpeechStopped, events)
    assert [s.end.by for s in stops if s.end is not None] == ["silence", "silence"]
    assert all(s.end is not None and s.end.silence_ms >= 400 for s in stops)
    first, second = (normalized(f.text) for f in of(TranscriptFinal, events))
    assert "flight" in first and "friday" in second, (first, second)


async def test_without_its_turn_model_the_asr_ends_utterances_by_silence(
        bus: Bus, start_asr: Start, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(turn_model, "MODEL_FILE", "missing.onnx")  # a broken install
    asr = await start_asr()
    started = await open_session(bus, asr)
    await stream(bus, started.session_id, frames("what_time"), speed=8.0)
    events = await wait_for(bus, started.session_id, lambda ev: bool(of(TranscriptFinal, ev)))
    (stopped,) = of(SpeechStopped, events)
    assert stopped.end is not None and stopped.end.by == "silence" and stopped.end.silence_ms >= 400
    assert "turn model not loaded" in caplog.text
