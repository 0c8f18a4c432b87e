"""A small local server speaking OpenAI's audio API, as OpenAI, Groq, SiliconFlow and
self-hosted FunASR/SenseVoice or Kokoro servers do, for the real `openai` SDK in the tests.

- `POST /v1/audio/transcriptions`: a multipart upload (`file`, `model`, `language`,
  `response_format`) answered `{"text": …}` in JSON: `transcript`. Each request is
  recorded with its form fields and the uploaded WAV's rate, channels and frames.
- `POST /v1/audio/speech`: JSON `{"model", "input", "voice", "response_format"}` answered
  with a tone lasting `ms_per_char` per character: raw PCM16 mono at `sample_rate` for
  `pcm`, a WAV whose header gives unknown sizes (as streaming servers write it) for `wav`.
  `streamed`: in odd-sized chunks with `chunk_delay` between them (samples split across
  chunks, as on the wire); otherwise one body with its Content-Length.

`fail_status` answers that HTTP error (OpenAI's error shape); `cut_after` breaks a streamed
body off after that many bytes (the status was 200); `delay` holds each answer
back that many seconds; `authorizations` records each request's Authorization header.
"""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bus.server import free_port
from devservers.threaded_server import ThreadedServer


def tone(seconds: float, rate: int, hz: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


def streaming_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF)."""
    unknown = (0xFFFFFFFF).to_bytes(4, "little")
    fmt = ((1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
           + (rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little"))
    return b"RIFF" + unknown + b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + unknown


class OpenAISpeechServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.transcript = "turn on the kitchen lights"
        self.sample_rate = 24000
        self.ms_per_char = 20.0
        self.streamed = True
        self.chunk_bytes = 999
        self.chunk_delay = 0.002
        self.fail_status: int | None = None
        self.cut_after: int | None = None  # a streamed body breaks off after this many bytes
        self.delay = 0.0
        self.transcriptions: list[dict[str, Any]] = []
        self.speeches: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.app = Starlette(routes=[
            Route("/v1/audio/transcriptions", self.transcribe, methods=["POST"]),
            Route("/v1/audio/speech", self.speak, methods=["POST"]),
        ])
        self._runner: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def audio_of(self, text: str) -> bytes:
        """The PCM this server speaks `text` as."""
        return tone(len(text) * self.ms_per_char / 1000, self.sample_rate)

    def _failure(self) -> Response | None:
        if self.fail_status is None:
            return None
        return JSONResponse({"error": {"message": "the model is overloaded", "type": "server_error",
                                       "code": None, "param": None}}, status_code=self.fail_status)

    async def transcribe(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization"))
        form = await request.form()
        upload = form["file"]
        assert isinstance(upload, UploadFile)
        data = await upload.read()
        with wave.open(io.BytesIO(data)) as wav:
            heard = {"rate": wav.getframerate(), "channels": wav.getnchannels(),
                     "frames": wav.getnframes()}
        self.transcriptions.append({
            "content_type": request.headers.get("content-type", "").split(";")[0],
            "filename": upload.filename, "wav": heard,
            **{k: v for k, v in form.items() if isinstance(v, str)}})
        await asyncio.sleep(self.delay)
        return self._failure() or JSONResponse({"text": self.transcript})

    async def speak(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization"))
        body = await request.json()
        self.speeches.append(body)
        await asyncio.sleep(self.delay)
        failure = self._failure()
        if failure is not None:
            return failure
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            return JSONResponse({"error": {"message": f"this test server serves pcm and wav, not {fmt}"}},
                                status_code=400)
        header = streaming_wav_header(self.sample_rate) if fmt == "wav" else b""
        audio = header + self.audio_of(body["input"])
        media = "audio/wav" if fmt == "wav" else "audio/pcm"
        if not self.streamed:
            return Response(audio, media_type=media)

        cut = self.cut_after

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(audio), self.chunk_bytes):
                if cut is not None and at >= cut:
                    raise ConnectionResetError("the server went away mid-answer")
                yield audio[at:at + self.chunk_bytes]
                await asyncio.sleep(self.chunk_delay)

        return StreamingResponse(chunks(), media_type=media)

    def start(self) -> OpenAISpeechServer:
        self._runner = ThreadedServer(self.app, self.port)
        self._runner.start()
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
