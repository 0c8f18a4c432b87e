"""Which language a session is heard and answered in.

An assistant's `language` is `en`, `zh` or `auto`. A client may say which language it
speaks (a xiaozhi hello's `language`, a device's OTA `Accept-Language`); that hint decides
only for the system's default assistant, whose language nobody chose. `auto` follows the
user: the language of their latest transcript, or the script of their latest typed text.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from schemas.account import DEFAULT_ASSISTANT_ID, Language

Spoken = Literal["en", "zh"]  # what vagent can hear and answer in
SPOKEN: tuple[str, ...] = get_args(Spoken)
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def spoken_language(tag: str | None) -> Spoken | None:
    """`zh` or `en` for a language tag such as "zh-CN" or "en_US"; None for any other."""
    primary = re.split(r"[-_]", (tag or "").strip().lower(), maxsplit=1)[0]
    return "zh" if primary == "zh" else "en" if primary == "en" else None


def preferred_language(accept_language: str | None) -> Spoken | None:
    """The most wanted of `zh` and `en` in an `Accept-Language` header ("zh-CN,zh;q=0.9,
    en;q=0.8"), by its q-values; None when it names neither."""
    ranked: list[tuple[float, int, Spoken]] = []
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.partition(";")
        spoken = spoken_language(tag)
        if spoken is None:
            continue
        quality = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                continue
        if quality > 0:
            ranked.append((-quality, position, spoken))
    return min(ranked)[2] if ranked else None


def text_language(text: str) -> Spoken | None:
    """The language a text is written in, told by its script: Han characters are Mandarin,
    Latin words English, whichever there are more of (Mandarin on a tie: its speakers mix
    in English names more often than the other way round); None for neither (digits, emoji)."""
    han, latin = len(_HAN.findall(text)), len(_LATIN_WORD.findall(text))
    if not han and not latin:
        return None
    return "zh" if han >= latin else "en"


def session_language(language: Language, assistant_id: str | None, hint: str | None) -> Language:
    """The session's language: its assistant's, or the client's hint (`zh`, `en`) for the
    default assistant (sessions that name no assistant have the default one)."""
    if (assistant_id or DEFAULT_ASSISTANT_ID) == DEFAULT_ASSISTANT_ID and hint in SPOKEN:
        return "zh" if hint == "zh" else "en"
    return language


def reply_language(language: Language, latest: str | None) -> Spoken:
    """The language to answer in: the session's, or for `auto` the one the user's latest
    input was in (`latest`: a transcript's language, or a typed text's script), else
    English."""
    if language == "auto":
        return "zh" if latest == "zh" else "en"
    return language
