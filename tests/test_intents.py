"""Exit intent: the utterance is, or clearly ends with, an exit phrase."""

from __future__ import annotations

import pytest

from actors.dialogue.intents import is_exit_intent

PHRASES = ["bye", "goodbye", "bye bye", "see you", "that's all", "再见", "拜拜"]


@pytest.mark.parametrize("text", [
    "bye",
    "Bye!",
    "BYE.",
    "  bye  ",
    "ok goodbye",
    "Okay, goodbye!",
    "Thanks, bye 👋",
    "thank you goodbye",
    "bye bye",
    "Bye-bye!",
    "bye for now",
    "goodbye everyone",
    "see you later",
    "I have to go now, bye!",
    "Thanks, that's all.",
    "That’s all for today",
    "再见",
    "再见！",
    "拜拜了",
    "好的，再见",
    "好的再见",
    "我先走了，拜拜啦！",
    "谢谢，再见了。",
    "ＢＹＥ",  # full-width
])
def test_exit(text: str) -> None:
    assert is_exit_intent(text, PHRASES)


@pytest.mark.parametrize("text", [
    "say bye to my mom for me?",
    "say bye to my mom for me",
    "I want to say goodbye",
    "how do you say goodbye in French",
    "don't say goodbye",
    "Goodbye? What do you mean?",
    "bye?",
    "goodbyes are hard",
    "standby",
    "maybe",
    "That's all I wanted to know",
    "that's",
    "我要说再见",
    "再见用英语怎么说？",
    "拜拜是什么意思",
    "",
    "   ",
    "👋",
    "ok",
])
def test_not_exit(text: str) -> None:
    assert not is_exit_intent(text, PHRASES)


def test_only_the_given_phrases_count() -> None:
    assert not is_exit_intent("see you", ["bye"])
    assert is_exit_intent("See ya!", ["see ya"])
    assert not is_exit_intent("bye", [])
    assert not is_exit_intent("bye", ["", "  "])
    assert is_exit_intent("bye bye", ["bye"])  # a repeated phrase is still the phrase
