"""The Mandarin voice: Kokoro-82M reading misaki's phonemes, heard back by whisper (its
character error rate within bounds), Chinese text cut at its clauses so the first audio
comes early, and Latin words inside Chinese read or spelled in the same voice."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from actors.asr.engine_whisper import WhisperEngine
from actors.tts.kokoro_voice import (
    DEFAULT_VOICE,
    SAMPLE_RATE,
    KokoroTts,
    Model,
    load,
    open_voice,
    pause_after,
    pieces,
)
from audio.encode import resample
from settings.config import ConfigError, TtsSettings

# Not the sentences of the committed clips, and no numbers: whisper writes "18" for 十八.
SENTENCES = ("今天天气很好，我们去公园散步吧。", "我已经帮你把客厅的灯关掉了。",
             "好的，我来为你播放一首轻松的音乐。")
_NOT_HEARD = re.compile(r"[\W_]+")


def cer(reference: str, heard: str) -> float:
    a, b = _NOT_HEARD.sub("", reference), _NOT_HEARD.sub("", heard)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1] / len(a)


@pytest.fixture(scope="module")
def model() -> Model:
    return load()


def test_chinese_is_cut_at_its_clauses() -> None:
    text = "好的，我来为你播放一首轻松的音乐。明天有雨；记得带伞！"
    assert pieces(text) == ["好的，", "我来为你播放一首轻松的音乐。", "明天有雨；", "记得带伞！"]
    assert "".join(pieces(text)) == text
    # The first clause goes alone, however short the sentence: its audio comes first.
    assert pieces("今天天气很好，我们去公园散步吧。") == ["今天天气很好，", "我们去公园散步吧。"]
    # An enumeration's items (、) are packed while they fit; a colon ends a clause.
    assert pieces("我们需要买苹果、香蕉、橙子、葡萄、西瓜和草莓：今天就去超市买吧") == [
        "我们需要买苹果、香蕉、橙子、", "葡萄、西瓜和草莓：", "今天就去超市买吧"]
    # A run without any punctuation is cut between words, never inside one (非常, 一直).
    run = "这是一个没有任何标点符号的非常非常长的句子它一直说下去直到最后才停下来"
    assert pieces(run) == ["这是一个没有任何标点符号", "的非常非常长的句子它", "一直说下去直到最后才",
                           "停下来"]
    assert pause_after("好的，") < pause_after("好的。")


def test_latin_words_are_read_in_the_same_voice(model: Model) -> None:
    # A known word from the English lexicon; an acronym, spelled letter by letter.
    assert model.english("hello") == "həlˈO"
    assert model.english("GPS") == "ʤˈi pˈi ˈɛs"
    assert model.english("Zqx") == "zˈi kjˈu ˈɛks"
    # A camel-cased name, by its parts; full-width letters are letters.
    assert model.english("iPhone") == "ˈI fˈOn"
    assert model.phonemes("ＧＰＳ").split() == ["ʤˈi", "pˈi", "ˈɛs"]
    phonemes = model.phonemes("我用Python写代码")
    assert "pˈIθˌɑn" in phonemes and not re.search(r"[A-Z][a-z]", phonemes.replace("pˈIθˌɑn", ""))


async def test_unknown_voices_are_refused() -> None:
    with pytest.raises(ConfigError, match="jm_kumo"):
        await open_voice("nobody", TtsSettings())
    # `[tts] voice` names the default provider's voice (a Piper file): not Kokoro's.
    voice = await open_voice(None, TtsSettings(voice="/voices/x.onnx"))
    try:
        assert voice.voice == DEFAULT_VOICE and voice.sample_rate == SAMPLE_RATE
    finally:
        await voice.close()


async def test_spoken_mandarin_is_heard_back_as_its_text(data_dir: Path) -> None:
    voice = await open_voice(None, TtsSettings())
    whisper = WhisperEngine(data_dir)
    assert isinstance(voice, KokoroTts)
    try:
        errors, heard = [], []
        for text in SENTENCES:
            chunks = [c async for c in voice.stream(text)]
            assert len(chunks) == len(pieces(text))  # each clause as soon as it is made
            pcm = b"".join(chunks)
            seconds = len(pcm) / 2 / SAMPLE_RATE
            assert 0.12 < seconds / len(text) < 0.5, seconds  # speech at a speaking pace
            heard.append(await whisper.transcribe_async(resample(pcm, SAMPLE_RATE, 16000)))
            errors.append(cer(text, heard[-1]))
        assert np.mean(errors) <= 0.15, list(zip(SENTENCES, heard, errors, strict=True))
    finally:
        await voice.close()
        await whisper.close()
