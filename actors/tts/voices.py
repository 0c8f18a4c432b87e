"""Which voice speaks a sentence: the session's one voice, or, for an assistant whose
language is `auto`, the Mandarin voice for Chinese text and the default voice for the rest."""

from __future__ import annotations

from dataclasses import dataclass

from actors.tts.synth import Synthesizer


def chinese(text: str) -> bool:
    """Whether `text` is mostly Chinese: it has Han characters, and no more than twice as many
    Latin letters (a Chinese sentence may name "Python" or "GPS")."""
    han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    return han > 0 and latin <= 2 * han


@dataclass(frozen=True)
class Voices:
    default: Synthesizer
    mandarin: Synthesizer | None = None  # set only when the script chooses

    def for_text(self, text: str) -> Synthesizer:
        if self.mandarin is not None and chinese(text):
            return self.mandarin
        return self.default
