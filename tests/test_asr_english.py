"""The committed English clips (a voice vagent never speaks with) as moonshine hears them:
the transcripts, graded by word error rate, stay within bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from actors.asr.engine_moonshine import MoonshineEngine
from benches.speech_set import clips, error_rate, wer

CLIPS = clips("en")


@pytest.fixture(scope="module")
async def moonshine() -> AsyncIterator[MoonshineEngine]:
    engine = MoonshineEngine()
    await engine.load()
    yield engine
    await engine.close()


async def test_the_english_set_is_heard_by_moonshine_within_its_word_error_rate(
        moonshine: MoonshineEngine) -> None:
    assert len(CLIPS) >= 4 and all(2.0 < c.seconds < 5.0 for c in CLIPS)
    heard = [await moonshine._run(moonshine.transcribe, c.pcm) for c in CLIPS]
    assert error_rate([(c.text, h) for c, h in zip(CLIPS, heard, strict=True)], "en") <= 0.15, heard
    assert all(wer(c.text, h) <= 0.4 for c, h in zip(CLIPS, heard, strict=True)), heard


async def test_a_streamed_utterance_is_heard_as_the_whole_clip_is(moonshine: MoonshineEngine) -> None:
    """Fed in 20 ms frames as the ASR actor feeds it, not handed over whole."""
    (clip,) = clips("en", ["lights"])
    recognition = await moonshine.start(lambda _text: None)
    for i in range(0, len(clip.pcm), 640):
        recognition.feed(clip.pcm[i:i + 640])
    assert wer(clip.text, await recognition.finish()) <= 0.15


def test_error_rates_count_edits_over_the_reference_ignoring_case_and_punctuation() -> None:
    assert wer("Play some quiet music for me.", "play some QUIET music, for me") == 0.0
    assert wer("Play some quiet music for me.", "Play quiet music for my") == 2 / 6
    assert error_rate([("a b", "a"), ("c d e f", "c d e f")], "en") == 1 / 6
    assert error_rate([("现在几点了？", "现在几点")], "zh") == 1 / 5
