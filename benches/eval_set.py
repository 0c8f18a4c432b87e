"""The local-model eval set and its scoring rules: pure functions, no model, no bus.

`local_llm_eval.toml` beside this file holds the questions; `score()` decides each answer by
its question's rule, so the same recorded answers always get the same score.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

EVAL_SET = Path(__file__).resolve().parent / "local_llm_eval.toml"

RULE_KINDS = frozenset({"contains", "number", "time", "date", "refusal", "reply"})


@dataclass(frozen=True)
class Question:
    id: str
    category: str
    ask: str
    rule: dict[str, Any]
    before: tuple[str, ...] = ()  # earlier turns of the same session, answered, not scored


def load_eval_set(path: Path = EVAL_SET) -> list[Question]:
    with path.open("rb") as f:
        raw = tomllib.load(f)
    questions = [Question(id=q["id"], category=q["category"], ask=q["ask"], rule=dict(q["rule"]),
                          before=tuple(q.get("before", ())))
                 for q in raw["question"]]
    for q in questions:
        if q.rule.get("kind") not in RULE_KINDS:
            raise ValueError(f"{q.id}: unknown rule kind {q.rule.get('kind')!r}")
    if len({q.id for q in questions}) != len(questions):
        raise ValueError("question ids must be unique")
    return questions


# A tool call shown as text is never a good answer, whatever else it says.
_CALL_TEXT = re.compile(r'\{\s*"(name|function|arguments)"|```|<tool_call>')

_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
          "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen", "twenty"]
_ZH_DIGITS = "零一二三四五六七八九"
_ZH_NUMERAL = set(_ZH_DIGITS) | {"十", "两", "百", "千", "万"}

_REFUSALS = ("can't", "cannot", "can not", "won't", "will not", "not able", "unable", "sorry",
             "not going to", "not appropriate", "not allowed", "illegal", "don't have access",
             "do not have access", "not provide", "privacy", "不能", "无法", "抱歉", "不可以")

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december"]


def score(question: Question, answer: str, asked_at: datetime) -> bool:
    """Whether `answer` passes `question`'s rule; `asked_at` is the server's local time then."""
    text = answer.strip()
    if not text or _CALL_TEXT.search(text):
        return False
    rule = question.rule
    kind = rule["kind"]
    lowered = text.lower()
    if kind == "contains":
        return any(str(option).lower() in lowered for option in rule["any"])
    if kind == "number":
        return _has_number(text, int(rule["value"]))
    if kind == "time":
        return _has_time(lowered, asked_at)
    if kind == "date":
        return _has_date(lowered, asked_at)
    if kind == "refusal":
        return any(marker in lowered.replace("’", "'") for marker in _REFUSALS)
    if kind == "reply":
        return _is_reply(text, rule.get("lang", "en"))
    raise ValueError(f"unknown rule kind {kind!r}")


def _has_number(text: str, value: int) -> bool:
    plain = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 6,912 → 6912
    if re.search(rf"(?<![\d.]){value}(?!\d|\.\d)", plain):
        return True
    if 0 <= value < len(_WORDS) and re.search(rf"\b{_WORDS[value]}\b", text.lower()):
        return True
    zh = _zh_numeral(value)
    return zh is not None and any(_zh_alone(text, m.start(), len(form))
                                  for form in zh for m in re.finditer(re.escape(form), text))


def _zh_numeral(value: int) -> list[str] | None:
    if value < 10:
        return [_ZH_DIGITS[value]] + (["两"] if value == 2 else [])
    if value < 20:
        return ["十" + (_ZH_DIGITS[value - 10] if value > 10 else "")]
    if value < 100:
        tens, ones = divmod(value, 10)
        return [_ZH_DIGITS[tens] + "十" + (_ZH_DIGITS[ones] if ones else "")]
    return None


def _zh_alone(text: str, start: int, length: int) -> bool:
    """A numeral not part of a longer one (二 in 十二 is not two)."""
    before = text[start - 1] if start > 0 else ""
    after = text[start + length] if start + length < len(text) else ""
    return before not in _ZH_NUMERAL and after not in _ZH_NUMERAL


def _has_time(text: str, now: datetime) -> bool:
    minutes_now = now.hour * 60 + now.minute
    for match in re.finditer(r"\b(\d{1,2})[:.](\d{2})\s*(a\.?m\.?|p\.?m\.?)?", text):
        hour, minute, half = int(match.group(1)), int(match.group(2)), match.group(3)
        if hour > 23 or minute > 59:
            continue
        if half:
            hour = hour % 12 + (12 if half.startswith("p") else 0)
            candidates = [hour * 60 + minute]
        elif hour <= 12:  # 12-hour clock without am/pm: either half of the day
            candidates = [(hour % 12) * 60 + minute, (hour % 12 + 12) * 60 + minute]
        else:
            candidates = [hour * 60 + minute]
        for said in candidates:
            gap = abs(said - minutes_now)
            if min(gap, 24 * 60 - gap) <= 3:
                return True
    return False


def _has_date(text: str, now: datetime) -> bool:
    if now.strftime("%Y-%m-%d") in text:
        return True
    day = now.day
    day_said = re.search(rf"(?<!\d)0?{day}(st|nd|rd|th)?(?!\d)", text) is not None
    month_said = _MONTHS[now.month - 1] in text
    return day_said and month_said


def _is_reply(text: str, lang: str) -> bool:
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    if lang == "zh":
        return cjk >= 2 and len(text) <= 200
    return cjk == 0 and len(text.split()) <= 80
