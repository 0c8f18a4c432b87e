"""Which voice speaks a sentence: the session's one voice, or, for an assistant whose
language is `auto`, the Mandarin voice for text written in Chinese and the default voice
for the rest (`domain.language.text_language`)."""

from __future__ import annotations

from dataclasses import dataclass

from actors.tts.synth import Synthesizer
from domain.language import text_language


@dataclass(frozen=True)
class Voices:
    default: Synthesizer
    mandarin: Synthesizer | None = None  # set only when the script chooses

    def for_text(self, text: str) -> Synthesizer:
        if self.mandarin is not None and text_language(text) == "zh":
            return self.mandarin
        return self.default
