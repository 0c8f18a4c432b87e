"""Which language a session is answered in, and what vagent says in each."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from actors.assistant import AssistantProfile
from actors.dialogue.actor import system_prompt
from actors.tools.clock import _describe
from domain.language import (
    preferred_language,
    reply_language,
    session_language,
    spoken_language,
    text_language,
)
from domain.phrases import PHRASES, localized, phrases
from settings.config import DialogueSettings


@pytest.mark.parametrize("header,wanted", [
    ("zh-CN", "zh"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh"), ("en-US,en;q=0.9", "en"),
    ("fr-FR,en;q=0.5,zh;q=0.7", "zh"), ("zh;q=0,en-GB", "en"), ("ja-JP", None), ("", None),
    (None, None), ("zh_TW", "zh"), ("*", None), ("en;q=..", None),
])
def test_accept_language_names_the_most_wanted_of_the_languages_vagent_speaks(
        header: str | None, wanted: str | None) -> None:
    assert preferred_language(header) == wanted


def test_a_tag_names_its_language() -> None:
    assert [spoken_language(t) for t in ("zh-CN", "EN_us", "zh", "fr", None, "")] == [
        "zh", "en", "zh", None, None, None]


@pytest.mark.parametrize("text,wanted", [
    ("现在几点？", "zh"), ("what time is it?", "en"), ("打开 kitchen lights", "zh"),
    ("please say 你好 to everyone in the room", "en"), ("12:30 🙂", None), ("", None),
])
def test_a_typed_texts_language_is_told_by_its_script(text: str, wanted: str | None) -> None:
    assert text_language(text) == wanted


def test_the_clients_hint_decides_only_for_the_default_assistant() -> None:
    assert session_language("en", "default", "zh") == "zh"
    assert session_language("auto", None, "en") == "en"
    assert session_language("en", "default", "fr") == "en"
    assert session_language("en", "a1", "zh") == "en"
    assert session_language("auto", "a1", "zh") == "auto"
    assert reply_language("auto", "zh") == "zh" and reply_language("auto", None) == "en"
    assert reply_language("zh", "en") == "zh"


def test_the_configured_defaults_are_the_english_phrases_and_a_change_is_kept() -> None:
    defaults = DialogueSettings()
    assert defaults.system_prompt == PHRASES["en"].persona
    assert defaults.goodbye == PHRASES["en"].goodbye
    assert localized(defaults.goodbye, "zh", "goodbye") == "再见！"
    assert localized("See you!", "zh", "goodbye") == "See you!"
    assert localized(defaults.system_prompt, "en", "persona") == defaults.system_prompt
    assert "简体中文" in localized(defaults.system_prompt, "zh", "persona")
    assert phrases("fr") is PHRASES["en"]


def test_the_persona_is_in_the_answers_language() -> None:
    built_in = PHRASES["en"].persona

    def mine(persona: str) -> AssistantProfile:
        return AssistantProfile(assistant_id="a1", persona=persona)

    assert system_prompt(None, built_in, "zh") == PHRASES["zh"].persona
    assert system_prompt(mine(""), built_in, "en") == built_in
    # A new account's assistant carries the built-in persona: it is the built-in one still.
    assert system_prompt(mine(built_in), "Configured.", "zh") == PHRASES["zh"].persona
    assert system_prompt(mine("You are Zed."), built_in, "en") == "You are Zed."
    assert system_prompt(mine("You are Zed."), built_in, "zh") == (
        f"You are Zed.\n\n{PHRASES['zh'].answer_in}")
    assert system_prompt(None, "Configured.", "zh") == f"Configured.\n\n{PHRASES['zh'].answer_in}"


def test_every_language_has_every_phrase() -> None:
    for language, words in PHRASES.items():
        assert len(words.weekdays) == 7 and len(words.months) == 12, language
        assert "{code}" in words.activation and all(
            getattr(words, f) for f in words.__slots__), language  # type: ignore[attr-defined]


def test_the_time_is_told_in_the_sessions_language() -> None:
    now = datetime(2026, 12, 7, 19, 5, 3, tzinfo=ZoneInfo("Asia/Shanghai"))
    zone = ZoneInfo("Asia/Shanghai")
    assert _describe(now, zone, "zh") == (
        "2026年12月7日 星期一 19:05:03，时区 Asia/Shanghai，UTC+08:00；ISO 2026-12-07T19:05:03+08:00")
    assert _describe(now, zone, "en") == (
        "Monday 07 December 2026, 19:05:03, time zone Asia/Shanghai, UTC+08:00; "
        "ISO 2026-12-07T19:05:03+08:00")
    assert _describe(now, None, "zh").split("，")[1] == "时区 CST（服务器本地时间）"
