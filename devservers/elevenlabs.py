"""A small local server speaking ElevenLabs' streaming text-to-speech API, for the real
`elevenlabs` SDK in the tests and the capacity bench (`[tts.elevenlabs] url` points the SDK
here).

`POST /v1/text-to-speech/{voice_id}/stream?output_format=pcm_<rate>` with header
`xi-api-key` and a JSON body `{"text", "model_id", …}` answers a chunked stream of raw
PCM16 mono little-endian at <rate>: a tone lasting `ms_per_char` per character of text,
in `chunk_bytes` pieces (odd, so samples are split across chunks as on the wire) with
`chunk_delay` between them, the first after `first_audio_delay` (a cloud voice's own
time). Only the pcm_* formats are served (the real API also has mp3, opus, μ-law). A wrong
key gets 401 in ElevenLabs' error shape; every request is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bus.server import free_port
from devservers.threaded_server import ThreadedServer, serve_until_interrupted

PCM_RATES = {8000, 16000, 22050, 24000, 44100, 48000}


def tone(seconds: float, rate: int, hz: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


class ElevenLabsServer:
    def __init__(self, api_key: str = "test-key", port: int = 0) -> None:
        self.api_key = api_key
        self.port = port or free_port()
        self.ms_per_char = 40.0
        self.chunk_bytes = 999
        self.chunk_delay = 0.005
        self.first_audio_delay = 0.0
        self.keep = True  # record requests (a benchmark's thousands would only grow)
        self.fail_status: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[
            Route("/v1/text-to-speech/{voice_id}/stream", self.stream, methods=["POST"]),
        ])
        self._runner: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stream(self, request: Request) -> Response:
        body = await request.json()
        fmt = request.query_params.get("output_format", "mp3_44100_128")
        if self.keep:
            self.requests.append({"voice_id": request.path_params["voice_id"], "output_format": fmt,
                                  "api_key": request.headers.get("xi-api-key"), "body": body})
        if request.headers.get("xi-api-key") != self.api_key:
            return JSONResponse({"detail": {"status": "invalid_api_key",
                                            "message": "Invalid API key"}}, status_code=401)
        if self.fail_status:
            return JSONResponse({"detail": {"status": "error", "message": "unavailable"}},
                                status_code=self.fail_status)
        rate = int(fmt.removeprefix("pcm_")) if fmt.startswith("pcm_") else 0
        if rate not in PCM_RATES:
            return JSONResponse({"detail": {"status": "invalid_output_format",
                                            "message": f"this test server only serves pcm_*: {fmt}"}},
                                status_code=422)
        audio = tone(len(body["text"]) * self.ms_per_char / 1000, rate)

        async def chunks() -> AsyncIterator[bytes]:
            if self.first_audio_delay:
                await asyncio.sleep(self.first_audio_delay)
            for at in range(0, len(audio), self.chunk_bytes):
                yield audio[at:at + self.chunk_bytes]
                await asyncio.sleep(self.chunk_delay)

        return StreamingResponse(chunks(), media_type="audio/pcm")

    def start(self) -> ElevenLabsServer:
        self._runner = ThreadedServer(self.app, self.port)
        self._runner.start()
        return self

    def stop(self) -> None:
        if self._runner:
            self._runner.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--first-audio-delay", type=float, default=0.0,
                        help="seconds before a request's first audio")
    parser.add_argument("--ms-per-char", type=float, default=60.0,
                        help="audio length per character of text")
    args = parser.parse_args()
    server = ElevenLabsServer(args.key, args.port)
    server.first_audio_delay = args.first_audio_delay
    server.ms_per_char = args.ms_per_char
    server.keep = False
    server.start()
    serve_until_interrupted(server, server.port, f"elevenlabs stand-in on {server.base_url}")


if __name__ == "__main__":
    main()
