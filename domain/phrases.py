"""What vagent itself says to people, per language: the default persona, the goodbye, the
apologies, the time told by `get_time`, what `knowledge_search` found nothing in, a device's
activation prompt. One place, so a language is added by adding its entry (and
`domain.language.Spoken`)."""

from __future__ import annotations

from dataclasses import dataclass

from domain.language import Spoken


@dataclass(frozen=True, slots=True)
class Phrases:
    persona: str  # the system prompt of an assistant with no persona of its own
    answer_in: str  # added to a persona someone wrote, so the model answers in this language
    goodbye: str  # the answer to an exit phrase
    unusable_call: str  # said instead of a tool call that cannot be run
    llm_unavailable: str  # shown when no LLM provider answered (a device's screen, a client)
    activation: str  # a device's prompt to be bound, with `{code}`
    no_documents: str  # knowledge_search's answer for an assistant with no documents
    nothing_found: str  # knowledge_search's answer when no passage matches `{query}`
    # get_time's answer: `{date}`, `{zone}`, `{offset}` ("+08:00") and `{iso}`
    time: str
    date: str  # `{weekday}`, `{day}`, `{month}` (name), `{month_number}`, `{year}`, `{clock}`
    local_zone: str  # `{name}` of the server's zone, when the user named no place
    weekdays: tuple[str, ...]  # Monday first
    months: tuple[str, ...]  # January first


PHRASES: dict[Spoken, Phrases] = {
    "en": Phrases(
        persona=("You are vagent, a friendly voice assistant. Answer in one to three short, "
                 "spoken-style sentences. Use a tool when it helps."),
        answer_in="Answer in English.",
        goodbye="Goodbye!",
        unusable_call="Sorry, I couldn't work that out. Could you ask me another way?",
        llm_unavailable="Sorry, I can't answer right now. Please try again in a moment.",
        activation="Bind this device in vagent with the code {code}",
        no_documents="This assistant has no documents to search.",
        nothing_found="Nothing in the assistant's documents matches {query!r}.",
        time="{date}, time zone {zone}, UTC{offset}; ISO {iso}",
        date="{weekday} {day:02d} {month} {year}, {clock}",
        local_zone="{name} (server local time)",
        weekdays=("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
        months=("January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December"),
    ),
    "zh": Phrases(
        persona=("你是 vagent，一个友好的语音助手。请用简体中文回答，用一到三个简短的口语化句子，"
                 "不要用列表或表情符号。需要时使用工具。"),
        answer_in="请用简体中文回答，句子简短、口语化。",
        goodbye="再见！",
        unusable_call="抱歉，我没弄明白。您能换个方式问吗？",
        llm_unavailable="抱歉，现在无法回答，请稍后再试。",
        activation="请在 vagent 中用验证码 {code} 绑定此设备",
        no_documents="这个助手没有可以查找的文档。",
        nothing_found="助手的文档中没有与“{query}”相符的内容。",
        time="{date}，时区 {zone}，UTC{offset}；ISO {iso}",
        date="{year}年{month_number}月{day}日 {weekday} {clock}",
        local_zone="{name}（服务器本地时间）",
        weekdays=("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"),
        months=("一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月",
                "十一月", "十二月"),
    ),
}


def phrases(language: str | None) -> Phrases:
    """The phrases of `language` (`zh`, `en`); English for any other."""
    return PHRASES["zh"] if language == "zh" else PHRASES["en"]


def localized(configured: str, language: str | None, pick: str) -> str:
    """A configurable text (`[dialogue] system_prompt`, `goodbye`) in the session's language:
    what the operator configured, unless it is still the built-in English phrase (`pick`, a
    field of Phrases), which becomes the language's own."""
    if configured != getattr(PHRASES["en"], pick):
        return configured
    text: str = getattr(phrases(language), pick)
    return text
