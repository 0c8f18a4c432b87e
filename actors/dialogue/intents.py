"""Recognising that the user wants to end the conversation ("bye", "再见").

Deliberately simple, and so predictable: an utterance is an exit when its last clause is
one of the exit phrases, possibly after lead-ins ("ok", "thanks", "好的") and before
trailing words ("now", "for today") or Chinese particles ("了", "啦"). The last clause is
what follows the last comma or full stop, so "Thanks, that's all." and "我先走了，拜拜"
are exits, while "say bye to my mom for me?" (a question, and "bye" is not its end),
"I want to say goodbye" and "我要说再见" (the phrase is an object, not the utterance) are not.
"""

from __future__ import annotations

import re
import unicodedata

_LEAD_INS = ("ok", "okay", "alright", "all right", "well", "so", "oh", "thanks", "thank you",
             "yes", "yeah", "好的", "好", "那就", "那", "嗯", "行", "谢谢你", "谢谢")
_TRAILING_WORDS = ("for now", "for today", "now", "then", "later", "everyone", "guys")
_PARTICLES = "了啦吧呀啊哦喔咯嘛哈呢"

_CLAUSE_BREAK = re.compile(r"[,.!;:…。、~]+")
_NOT_TEXT = re.compile(r"[^\w\s',.!?;:…。、~]")  # emoji, dashes, quotes, other symbols
_TRAILING = re.compile(r"(?:\s+|^)(?:" + "|".join(map(re.escape, _TRAILING_WORDS)) + r")$")


def is_exit_intent(text: str, phrases: list[str]) -> bool:
    """True when `text` ends the conversation: it is one of `phrases`, or clearly ends
    with one (see the module's docstring). Case, width, punctuation and emoji are ignored;
    a question is never an exit."""
    normal = _normalize(text)
    if normal.rstrip().endswith("?"):
        return False
    clauses = [clause for clause in _CLAUSE_BREAK.split(normal) if clause.strip()]
    if not clauses:
        return False
    last = _core(clauses[-1])
    cores = {core for core in (_core(_normalize(phrase)) for phrase in phrases) if core}
    if not last or not cores:
        return False
    # What may precede the phrase in the clause: lead-ins and other exit phrases ("bye bye").
    prefix = re.compile(r"(?:(?:" + "|".join(
        re.escape(word) for word in sorted({*_LEAD_INS, *cores}, key=len, reverse=True)
    ) + r")\s*)*")
    for core in cores:
        if not last.endswith(core):
            continue
        before = last[:-len(core)]
        if before and _is_latin(core[0]) and not before.endswith(" "):
            continue  # "goodbye" does not end with the word "bye"
        if prefix.fullmatch(before):
            return True
    return False


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    return " ".join(_NOT_TEXT.sub(" ", text).split())


def _core(clause: str) -> str:
    """The clause without its trailing words and particles: "bye for now" → "bye"."""
    clause = clause.strip()
    while True:
        shorter = _TRAILING.sub("", clause).rstrip(_PARTICLES).strip()
        if shorter == clause:
            return clause
        clause = shorter


def _is_latin(char: str) -> bool:
    return char.isascii() and char.isalnum()
