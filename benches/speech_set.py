"""The committed speech test set and how a transcript is graded against it.

Clips live in `tests/fixtures/<language dir>/` beside a `texts.json` (name → what is said):
16 kHz mono PCM16, made with voices vagent never speaks with (each directory's README).
Mandarin is graded by character error rate (CER), English by word error rate (WER); both
ignore case, punctuation and spacing, which no recogniser is asked to get right here.
"""

from __future__ import annotations

import json
import re
import wave
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DIRS = {"zh": "mandarin", "en": "english"}  # language → the directory of its clips
RATE = 16000
_NOT_HEARD = re.compile(r"[\W_]+")  # punctuation and spaces are not graded
_JOINED = re.compile(r"(?<=\w)-(?=\w)")  # "to-morrow" is "tomorrow": a spelling, not a word more


@dataclass(frozen=True)
class Clip:
    name: str
    language: str  # zh | en
    text: str
    pcm: bytes  # 16 kHz mono PCM16

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / RATE


def clips(language: str, names: list[str] | None = None) -> list[Clip]:
    """The language's clips in texts.json's order (only `names`, when given)."""
    folder = FIXTURES / DIRS[language]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: the speech test set is part of a source checkout")
    texts: dict[str, str] = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
    return [Clip(name, language, text, read_clip(folder / f"{name}.wav"))
            for name, text in texts.items() if names is None or name in names]


def read_clip(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: not 16 kHz mono PCM16")
        return w.readframes(w.getnframes())


def edits(a: list[str] | str, b: list[str] | str) -> int:
    """Levenshtein distance between two sequences (characters or words)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def units(text: str, language: str) -> list[str]:
    """What is graded: characters for Mandarin, lower-case words for English."""
    if language == "zh":
        return list(_NOT_HEARD.sub("", text))
    return [w for w in _NOT_HEARD.sub(" ", _JOINED.sub("", text.lower())).split() if w]


def error_rate(pairs: list[tuple[str, str]], language: str) -> float:
    """CER (zh) or WER (en) over (reference, heard) pairs: all edits over all reference
    units, so a long clip weighs more than a short one."""
    errors = sum(edits(units(ref, language), units(heard, language)) for ref, heard in pairs)
    return errors / max(1, sum(len(units(ref, language)) for ref, _ in pairs))


def cer(reference: str, heard: str) -> float:
    return error_rate([(reference, heard)], "zh")


def wer(reference: str, heard: str) -> float:
    return error_rate([(reference, heard)], "en")
