"""The ASR actor's settings, from the environment (vagent.toml has no [asr] table yet).

| variable | default | meaning |
|---|---|---|
| VAGENT_ASR_ENGINE | auto | `moonshine`, `deepgram`, or `auto`: Deepgram when DEEPGRAM_API_KEY is set |
| VAGENT_VAD_THRESHOLD | 0.5 | silero speech probability that starts speech |
| VAGENT_VAD_SILENCE_MS | 400 | silence that ends an utterance (auto mode) |
| VAGENT_VAD_PREROLL_MS | 250 | audio kept from before the onset |
| VAGENT_VAD_MIN_SPEECH_MS | 96 | shorter speech never opens an utterance |
| VAGENT_ASR_MAX_UTTERANCE_MS | 30000 | an utterance is cut here |
| VAGENT_BARGE_IN_MIN_MS | 300 | speech over the assistant this long interrupts it |
| VAGENT_ASR_PARTIAL_MS | 400 | moonshine: audio between partial transcripts |
| DEEPGRAM_API_KEY | none | Deepgram key (environment or VAGENT_SECRETS_FILE only) |
| VAGENT_DEEPGRAM_URL | wss://api.deepgram.com | Deepgram's WebSocket base (tests: a local server) |
| VAGENT_DEEPGRAM_MODEL | nova-3 | |
| VAGENT_DEEPGRAM_LANGUAGE | en | |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from actors.asr.vad import VadSettings
from settings.config import secret


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class DeepgramSettings:
    api_key: str
    url: str = "wss://api.deepgram.com"
    model: str = "nova-3"
    language: str = "en"


@dataclass(frozen=True)
class AsrSettings:
    engine: str = "moonshine"  # moonshine | deepgram
    vad: VadSettings = field(default_factory=VadSettings)
    barge_in_min_ms: int = 300
    partial_ms: int = 400
    deepgram: DeepgramSettings | None = None

    @classmethod
    def from_env(cls) -> AsrSettings:
        key = secret("DEEPGRAM_API_KEY")
        wanted = os.environ.get("VAGENT_ASR_ENGINE", "auto").strip().lower() or "auto"
        if wanted not in ("auto", "moonshine", "deepgram"):
            raise ValueError(f"VAGENT_ASR_ENGINE={wanted!r}: expected auto, moonshine or deepgram")
        engine = ("deepgram" if key else "moonshine") if wanted == "auto" else wanted
        if engine == "deepgram" and not key:
            raise ValueError("VAGENT_ASR_ENGINE=deepgram needs DEEPGRAM_API_KEY")
        deepgram = None
        if key:
            deepgram = DeepgramSettings(
                api_key=key,
                url=os.environ.get("VAGENT_DEEPGRAM_URL", DeepgramSettings.url).rstrip("/"),
                model=os.environ.get("VAGENT_DEEPGRAM_MODEL", DeepgramSettings.model),
                language=os.environ.get("VAGENT_DEEPGRAM_LANGUAGE", DeepgramSettings.language),
            )
        defaults = VadSettings()
        vad = VadSettings(
            threshold=_float("VAGENT_VAD_THRESHOLD", defaults.threshold),
            silence_ms=_int("VAGENT_VAD_SILENCE_MS", defaults.silence_ms),
            preroll_ms=_int("VAGENT_VAD_PREROLL_MS", defaults.preroll_ms),
            min_speech_ms=_int("VAGENT_VAD_MIN_SPEECH_MS", defaults.min_speech_ms),
            max_utterance_ms=_int("VAGENT_ASR_MAX_UTTERANCE_MS", defaults.max_utterance_ms),
        )
        return cls(engine=engine, vad=vad, barge_in_min_ms=_int("VAGENT_BARGE_IN_MIN_MS", 300),
                   partial_ms=_int("VAGENT_ASR_PARTIAL_MS", 400), deepgram=deepgram)
