"""The ASR actor's settings as its engines use them: `[asr]` of vagent.toml (settings/config.py)
with the engine chosen and Deepgram's key read (DEEPGRAM_API_KEY: environment or
VAGENT_SECRETS_FILE only). `[[asr.providers]]` make up the `openai` engine's chain."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from actors.asr.vad import VadSettings
from schemas import TurnSettings
from settings import config, paths
from settings.config import AsrProviderConfig, BreakerConfig, ConfigError, TurnConfig, secret

CHAIN = "openai"  # the engine made of `[[asr.providers]]`
LOCAL_ENGINES = frozenset({"moonshine", "whisper"})  # they transcribe on this host's CPU
# Sessions per core a worker with a local engine takes by default: a voice turn costs
# ~0.85 s of CPU and a listening session ~3 % of a core (its VAD), so 8 per core leaves room
# for about a quarter of them speaking at once before every turn slows down.
LOCAL_SESSIONS_PER_CORE = 8


@dataclass(frozen=True)
class DeepgramSettings:
    api_key: str
    url: str = "wss://api.deepgram.com"
    model: str = "nova-3"
    language: str = "en"


@dataclass(frozen=True)
class TurnRules:
    """One session's turn-taking: its assistant's `turn` settings over `[asr.turn]`."""

    detector: str = "smart_turn"  # smart_turn | silence
    complete_hold_ms: int = 200
    incomplete_max_ms: int = 2000
    threshold: float = 0.5
    barge_in_min_ms: int = 300
    false_interruption_timeout_ms: int = 2000
    backchannels: frozenset[str] = frozenset()  # lower case
    echo: str = "auto"  # auto | on | off

    @classmethod
    def of(cls, config: TurnConfig, barge_in_min_ms: int, own: TurnSettings | None) -> TurnRules:
        merged: dict[str, Any] = msgspec.structs.asdict(config)
        merged["barge_in_min_ms"] = barge_in_min_ms
        if own is not None:
            merged.update((k, v) for k, v in msgspec.structs.asdict(own).items() if v is not None)
        merged["backchannels"] = frozenset(b.lower() for b in merged["backchannels"])
        return cls(**merged)


@dataclass(frozen=True)
class AsrSettings:
    engine: str = "moonshine"  # moonshine | deepgram | whisper | openai
    vad: VadSettings = field(default_factory=VadSettings)
    barge_in_min_ms: int = 300
    partial_ms: int = 400
    deepgram: DeepgramSettings | None = None
    data_dir: Path = Path(".vagent")  # where local models are assembled (whisper's)
    providers: tuple[AsrProviderConfig, ...] = ()
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    max_sessions: int | None = None  # sessions one worker hears at once; None: no limit
    max_queue_ms: int = 10000

    def rules(self, own: TurnSettings | None) -> TurnRules:
        """The turn-taking of a session whose assistant has `own` turn settings."""
        return TurnRules.of(self.turn, self.barge_in_min_ms, own)

    def chain_member(self, name: str) -> bool:
        """Whether `name` is one of `[[asr.providers]]` (an assistant may pick one)."""
        return any(p.name == name for p in self.providers)

    @classmethod
    def from_config(cls, section: config.AsrSettings, data_dir: Path | None = None) -> AsrSettings:
        key = secret("DEEPGRAM_API_KEY")
        engine: str = section.engine
        if engine == "auto":
            engine = CHAIN if section.providers else "deepgram" if key else "moonshine"
        if engine == CHAIN and not section.providers:
            raise ConfigError("the openai ASR engine ([asr] engine) needs [[asr.providers]]")
        if engine == "deepgram" and not key:
            raise ConfigError("the deepgram ASR engine ([asr] engine) needs DEEPGRAM_API_KEY")
        deepgram = None
        if key:
            wanted = section.deepgram
            deepgram = DeepgramSettings(api_key=key, url=wanted.url.rstrip("/"), model=wanted.model,
                                        language=wanted.language)
        return cls(engine=engine, vad=section.vad, barge_in_min_ms=section.barge_in_min_ms,
                   partial_ms=section.partial_ms, deepgram=deepgram,
                   data_dir=data_dir or paths.data_dir(), providers=tuple(section.providers),
                   breaker=section.breaker, turn=section.turn,
                   max_sessions=capacity(section.max_sessions, engine),
                   max_queue_ms=max(0, section.max_queue_ms))


def capacity(max_sessions: int, engine: str) -> int | None:
    """The sessions a worker takes at once (None: no limit): `[asr] max_sessions`, or when
    it is 0 a local engine's share of this host's cores."""
    if max_sessions > 0:
        return max_sessions
    if max_sessions < 0 or engine not in LOCAL_ENGINES:
        return None
    return LOCAL_SESSIONS_PER_CORE * len(os.sched_getaffinity(0))
