"""Cloud ASR: Deepgram's live transcription through the official `deepgram-sdk`.

One WebSocket per utterance, opened when the VAD hears speech (the pre-roll and the
audio that comes while it connects are queued, so nothing is lost and the connect
time hides behind the user's own speech). Interim `Results` become partial text;
at the end `CloseStream` makes Deepgram flush, send its last final `Results` and
close, and the final text is every `is_final` segment joined. Our VAD, not
Deepgram's endpointing, decides where an utterance ends, so the whole session
sees one notion of turn boundaries whichever engine transcribes.

The base URL is configurable (`[asr.deepgram] url`), so tests run the real SDK against
`devservers/deepgram.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

from actors.asr.engine import AsrError, PartialCallback
from actors.asr.settings import AsrSettings, DeepgramSettings
from settings.config import ConfigError

log = logging.getLogger("vagent.asr")

KEEPALIVE_S = 5.0  # Deepgram closes a socket that hears nothing for ~10 s
FINISH_TIMEOUT_S = 10.0  # from CloseStream to the last result


def environment(url: str) -> DeepgramClientEnvironment:
    """The SDK's environment for a WebSocket base such as wss://api.deepgram.com."""
    http = "http" + url[2:] if url.startswith("ws") else url
    return DeepgramClientEnvironment(base=http, production=url, agent=url, agent_rest=http)


class DeepgramEngine:
    provider = "deepgram"

    def __init__(self, settings: DeepgramSettings) -> None:
        self.settings = settings
        self.language: str | None = settings.language
        self._client: AsyncDeepgramClient | None = None

    async def load(self) -> None:
        if self._client is None:
            self._client = AsyncDeepgramClient(api_key=self.settings.api_key,
                                               environment=environment(self.settings.url))

    async def start(self, on_partial: PartialCallback) -> DeepgramRecognition:
        await self.load()
        assert self._client is not None
        return DeepgramRecognition(self._client, self.settings, on_partial)

    async def close(self) -> None:
        self._client = None  # sockets are per utterance; nothing stays open


def make(settings: AsrSettings) -> DeepgramEngine:
    if settings.deepgram is None:
        raise ConfigError("the deepgram ASR engine needs DEEPGRAM_API_KEY "
                          "(environment or VAGENT_SECRETS_FILE)")
    return DeepgramEngine(settings.deepgram)


class DeepgramRecognition:
    def __init__(self, client: AsyncDeepgramClient, settings: DeepgramSettings,
                 on_partial: PartialCallback) -> None:
        self.client = client
        self.settings = settings
        self.on_partial = on_partial
        self._audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._finals: list[str] = []
        self._interim = ""
        self._last_partial = ""
        self._task = asyncio.create_task(self._run(), name="deepgram")

    def feed(self, pcm: bytes) -> None:
        if pcm:
            self._audio.put_nowait(pcm)

    async def finish(self) -> str:
        self._audio.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), FINISH_TIMEOUT_S + 5)
        except TimeoutError:
            self._task.cancel()
            raise AsrError("deepgram gave no final result in time") from None
        except Exception as exc:
            raise AsrError(f"deepgram failed: {_describe(exc)}") from exc
        return _join(self._finals)

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    async def _run(self) -> None:
        async with self.client.listen.v1.connect(
            model=self.settings.model, language=self.settings.language, encoding="linear16",
            sample_rate="16000", channels="1", interim_results="true", punctuate="true",
        ) as socket:
            receiver = asyncio.create_task(self._receive(socket))
            try:
                while True:
                    try:
                        # Not wait_for: on Python 3.11 it can swallow cancel()'s cancellation.
                        async with asyncio.timeout(KEEPALIVE_S):
                            chunk = await self._audio.get()
                    except TimeoutError:
                        await socket.send_keep_alive()
                        continue
                    if chunk is None:
                        break
                    await socket.send_media(chunk)
                await socket.send_close_stream()
                await asyncio.wait_for(receiver, FINISH_TIMEOUT_S)
            finally:
                receiver.cancel()

    async def _receive(self, socket: Any) -> None:
        async for message in socket:
            kind = getattr(message, "type", None)
            if kind == "Results":
                alternatives = message.channel.alternatives
                text = alternatives[0].transcript.strip() if alternatives else ""
                if message.is_final:
                    if text:
                        self._finals.append(text)
                    self._interim = ""
                else:
                    self._interim = text
                partial = _join([*self._finals, self._interim])
                if partial and partial != self._last_partial:
                    self._last_partial = partial
                    self.on_partial(partial)
            elif kind == "Error":
                raise AsrError(f"deepgram error: {getattr(message, 'description', message)}")


def _describe(exc: BaseException) -> str:
    """The SDK's ApiError prints every request header; the status and body say enough."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        return f"HTTP {status}: {getattr(exc, 'body', '')}"
    return str(exc) or type(exc).__name__


def _join(parts: list[str]) -> str:
    return " ".join(p for p in parts if p)
