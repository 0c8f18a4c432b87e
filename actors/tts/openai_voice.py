"""TTS by URL: `[[tts.providers]]`, a chain of OpenAI-compatible speech servers (OpenAI,
SiliconFlow, a self-hosted Kokoro server…) through the `openai` SDK's streaming
`audio.speech` call, asking for raw PCM or WAV so nothing needs decoding and audio plays
as it arrives.

A provider that errors or gives no audio within its `first_audio_timeout` is skipped and
the next speaks the sentence, with the same breakers as the LLM chain (actors.fallback).
Once audio has flowed, a failure ends the sentence (`tts_failed`): the next provider
would say it again from the start.

The chain speaks at one rate, its first provider's (an assistant's pick first); audio of
another provider at another rate is resampled to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import httpx2
import openai

from actors.fallback import OpenAIProvider, chain_of, failure_text, first_answer
from actors.tts.providers import CHAIN
from audio.resample import Resampler
from audio.wavfile import AudioFileError, WavStream
from settings.config import ConfigError, TtsProviderConfig, TtsSettings

Speaker = OpenAIProvider[TtsProviderConfig]
# The body streams through the SDK's HTTP client (httpx2) itself: a cut connection is that
# client's error, not the SDK's.
_FAILURES = (openai.APIError, httpx2.HTTPError, TimeoutError, AudioFileError)


class SpeechFailed(Exception):
    """The provider failed after its first audio."""


def describe(exc: BaseException) -> str:
    if isinstance(exc, StopAsyncIteration):
        return "no audio at all"
    return failure_text(exc, "no audio in time")


class OpenAITts:
    def __init__(self, members: list[Speaker], *, prefer: str | None = None,
                 voice: str | None = None, owner: bool = True) -> None:
        self.members = members
        self.prefer = prefer
        self.owner = owner  # whether its clients are its own to close
        self.first = next((m for m in members if m.name == prefer), members[0])
        self.name = prefer or CHAIN  # a name open_provider opens again the same way
        self.voice = voice or self.first.config.voice  # the first provider's: `voice` replaces it
        self.sample_rate = self.first.config.sample_rate

    def picking(self, name: str, voice: str | None) -> OpenAITts | None:
        """The same providers, clients and breakers, with `name` (one of them, or the chain
        itself) tried first and speaking in `voice`; None when `name` is none of them."""
        if name != CHAIN and all(m.name != name for m in self.members):
            return None
        return OpenAITts(self.members, prefer=None if name == CHAIN else name, voice=voice,
                         owner=False)

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()

        async def attempt(member: Speaker) -> tuple[AsyncGenerator[bytes, None], bytes, float]:
            deadline = loop.time() + member.config.timeout
            audio = self._audio(member, text)
            try:
                async with asyncio.timeout(member.config.first_audio_timeout):
                    return audio, await anext(audio), deadline
            except BaseException:
                await audio.aclose()
                raise

        member, (audio, first, deadline) = await first_answer(
            self.members, attempt, failures=(*_FAILURES, StopAsyncIteration), describe=describe,
            prefer=self.prefer, kind="TTS")
        try:
            yield first
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(audio)
                except StopAsyncIteration:
                    break
                yield chunk
        except _FAILURES as exc:
            member.breaker.failure()
            raise SpeechFailed(f"{member.where} stopped speaking: {describe(exc)}") from exc
        finally:
            await audio.aclose()
        member.breaker.success()

    async def _audio(self, member: Speaker, text: str) -> AsyncGenerator[bytes, None]:
        """The provider's audio as PCM16 at the chain's rate, in non-empty whole samples."""
        config = member.config
        voice = self.voice if member is self.first else config.voice
        wav = WavStream() if config.response_format == "wav" else None
        resampler: Resampler | None = None
        carry = b""  # HTTP chunks may split a sample
        async with member.client.audio.speech.with_streaming_response.create(
                model=config.model, voice=voice, input=text,
                response_format=config.response_format) as response:
            async for chunk in response.iter_bytes():
                rate = config.sample_rate
                if wav is not None:
                    chunk = wav.feed(chunk)
                    rate = wav.sample_rate or rate
                data = carry + chunk
                whole = len(data) - len(data) % 2
                carry, data = data[whole:], data[:whole]
                if data and rate != self.sample_rate:
                    resampler = resampler or Resampler(rate, self.sample_rate)
                    data = resampler.convert(data)
                if data:
                    yield data
        if resampler is not None and (tail := resampler.flush()):
            yield tail

    async def close(self) -> None:
        if not self.owner:
            return
        for member in self.members:
            await member.client.close()


async def open_voice(voice: str | None, settings: TtsSettings) -> OpenAITts:
    if not settings.providers:
        raise ConfigError("the openai TTS provider needs [[tts.providers]]")
    prefer = settings.provider if any(p.name == settings.provider for p in settings.providers) else None
    return OpenAITts(chain_of(settings.providers, settings.breaker), prefer=prefer, voice=voice)
