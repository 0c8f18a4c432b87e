"""ASR by URL: `[[asr.providers]]`, a chain of OpenAI-compatible transcription servers
(OpenAI, Groq, SiliconFlow, a self-hosted FunASR/SenseVoice server…) through the `openai`
SDK's `audio.transcriptions.create`.

Such servers hear a whole file, so the utterance is gathered while the user speaks and
sent at its end as a 16 kHz mono WAV (multipart upload), with the session's language
as a hint when it is known. A provider that errors or times out is skipped for the next,
with the same breakers as the LLM chain (actors.fallback); when all fail, the utterance
fails with AsrError and the session hears `asr_failed`.

One engine (one set of clients and breakers) serves every session; each session gets a
view of it (`speaking`) with its own language and its assistant's preferred provider.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import openai
from openai import omit

from actors.asr.engine import AsrError, PartialCallback, WholeUtterance
from actors.asr.settings import CHAIN, AsrSettings
from actors.fallback import Clock, OpenAIProvider, ProviderFailed, chain_of, failure_text, first_answer
from audio.wavfile import wav_bytes
from domain.language import text_language
from settings.config import AsrProviderConfig, BreakerConfig, ConfigError

Transcriber = OpenAIProvider[AsrProviderConfig]
_FAILURES = (openai.APIError, TimeoutError)


def describe(exc: BaseException) -> str:
    return failure_text(exc, "no transcript in time")


@dataclass
class _Chain:
    """What every view of the engine shares."""

    members: list[Transcriber]

    async def transcribe(self, pcm: bytes, language: str | None, prefer: str | None) -> tuple[str, str]:
        """The transcript and the name of the provider that made it."""
        wav = wav_bytes(pcm)

        async def attempt(member: Transcriber) -> str:
            async with asyncio.timeout(member.config.timeout):
                result = await member.client.audio.transcriptions.create(
                    file=("utterance.wav", wav, "audio/wav"), model=member.config.model,
                    language=language or omit, response_format="json")
            return result.text

        try:
            member, text = await first_answer(self.members, attempt, failures=_FAILURES,
                                              describe=describe, prefer=prefer, kind="ASR")
        except ProviderFailed as exc:
            raise AsrError(f"no ASR provider transcribed the utterance: {exc}") from exc
        member.breaker.success()
        return text.strip(), member.name


class OpenAIEngine:
    def __init__(self, chain: _Chain, *, language: str | None = None,
                 prefer: str | None = None, owner: bool = False) -> None:
        self.chain = chain
        self.owner = owner  # whether the clients are its own to close
        self.hint = language  # sent with each utterance
        self.language = language  # of the transcripts: the hint, else told by their script
        self.prefer = prefer
        # The provider that transcribed the session's last utterance (transcript.final
        # records it); before any, the one it asks first.
        self.provider = prefer or chain.members[0].name

    @classmethod
    def of(cls, configs: tuple[AsrProviderConfig, ...], breaker: BreakerConfig,
           clock: Clock = time.monotonic) -> OpenAIEngine:
        engine = cls(_Chain(chain_of(configs, breaker, clock)), owner=True)
        engine.provider = CHAIN  # the shared engine, as `[asr] engine` names it
        return engine

    def speaking(self, language: str | None, prefer: str | None = None) -> OpenAIEngine:
        """A session's view: `language` (`zh`, `en`; None lets the server tell) and the
        provider its assistant picked, tried first."""
        return OpenAIEngine(self.chain, language=language, prefer=prefer)

    async def load(self) -> None:
        pass  # clients connect on their first request

    async def start(self, on_partial: PartialCallback) -> WholeUtterance:
        return WholeUtterance(self._transcribe)

    async def _transcribe(self, pcm: bytes) -> str:
        text, provider = await self.chain.transcribe(pcm, self.hint, self.prefer)
        if not self.owner:  # the shared engine keeps the name `_shared` knows it by
            self.provider = provider
        # A session whose language is `auto` answers in the language it is spoken to in.
        self.language = self.hint or text_language(text)
        return text

    async def close(self) -> None:
        if not self.owner:
            return  # a session's view: the clients are the shared engine's
        for member in self.chain.members:
            await member.client.close()


def make(settings: AsrSettings) -> OpenAIEngine:
    if not settings.providers:
        raise ConfigError("the openai ASR engine needs [[asr.providers]]")
    return OpenAIEngine.of(settings.providers, settings.breaker)
