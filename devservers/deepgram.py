"""A small server speaking Deepgram's live-transcription WebSocket protocol (v1/listen).

Enough of it for the real `deepgram-sdk` to run against: the API key in
`Authorization: Token <key>` (401 otherwise), options as query parameters, binary
audio frames, JSON control messages (`KeepAlive`, `Finalize`, `CloseStream`), and
JSON `Results` answers with `is_final` / `speech_final`, then `Metadata` on close.

It does not recognise speech: each connection answers with the next canned text of
`transcripts` (or `default_text`), revealed word by word as audio arrives (interim
results every `interim_every_s` of audio), and as one final result on `Finalize` or
`CloseStream` (after `final_delay` seconds: a cloud recogniser's own time, for the
benchmark). Everything a client sent is kept in `connections` for the tests.

    uv run python -m devservers.deepgram --port 8766 --text "hello there" --final-delay 0.15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bus.server import free_port
from devservers.threaded_server import serve_until_interrupted

BYTES_PER_S = 32000  # linear16 at 16 kHz mono


@dataclass
class Connection:
    path: str
    query: dict[str, str]
    audio_bytes: int = 0
    control: list[str] = field(default_factory=list)  # KeepAlive, Finalize, CloseStream, …
    results: list[dict[str, Any]] = field(default_factory=list)  # what was answered


class DeepgramServer:
    def __init__(self, api_key: str = "test-key", port: int = 0) -> None:
        self.api_key = api_key
        self.port = port or free_port()
        self.default_text = ""
        self.transcripts: list[str] = []  # one per connection, in order; then default_text
        self.interim_every_s = 0.5
        self.final_delay = 0.0  # seconds from Finalize / CloseStream to the final result
        self.keep = True  # record connections (a benchmark's thousands would only grow)
        self.connections: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # --- lifecycle (a thread of its own, like the other test servers) ---------------

    def start(self) -> DeepgramServer:
        self._thread = threading.Thread(target=self._serve_forever, daemon=True, name="deepgram")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("deepgram test server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
        if self._thread:
            self._thread.join(10)

    def _serve_forever(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with serve(self._handle, "127.0.0.1", self.port,
                         process_request=self._check) as server:
            self._server = server
            self._ready.set()
            await server.wait_closed()

    # --- the protocol -----------------------------------------------------------------

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != "/v1/listen":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid credentials\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        conn = Connection(parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()})
        if self.keep:
            self.connections.append(conn)
        words = (self.transcripts.pop(0) if self.transcripts else self.default_text).split()
        request_id = str(uuid.uuid4())
        sent_until = 0.0  # audio seconds already answered with an interim result
        final_from = 0.0  # audio seconds before this are covered by a final result
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    conn.audio_bytes += len(message)
                    heard = conn.audio_bytes / BYTES_PER_S
                    if words and heard - sent_until >= self.interim_every_s:
                        sent_until = heard
                        # Reveal words as if one were spoken every 0.3 s of audio.
                        shown = words[:max(1, min(len(words), int(heard / 0.3)))]
                        await self._results(ws, conn, request_id, shown, final_from, heard,
                                            is_final=False)
                    continue
                kind = json.loads(message).get("type")
                conn.control.append(kind)
                heard = conn.audio_bytes / BYTES_PER_S
                if kind in ("Finalize", "CloseStream") and heard > final_from:
                    if self.final_delay:
                        await asyncio.sleep(self.final_delay)
                    await self._results(ws, conn, request_id, words, final_from, heard,
                                        is_final=True, from_finalize=kind == "Finalize")
                    final_from = heard
                    words = []  # said once
                if kind == "CloseStream":
                    await ws.send(json.dumps({
                        "type": "Metadata", "transaction_key": "deprecated",
                        "request_id": request_id, "sha256": "0" * 64, "created": "2025-01-01T00:00:00Z",
                        "duration": heard, "channels": 1}))
                    await ws.close()
                    return
        except ConnectionClosed:
            pass

    async def _results(self, ws: ServerConnection, conn: Connection, request_id: str,
                       words: list[str], start: float, end: float, *, is_final: bool,
                       from_finalize: bool = False) -> None:
        step = (end - start) / max(1, len(words))
        message = {
            "type": "Results", "channel_index": [0, 1], "start": start, "duration": end - start,
            "is_final": is_final, "speech_final": is_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": " ".join(words), "confidence": 0.99,
                "words": [{"word": w.lower().strip(".,?!"), "punctuated_word": w,
                           "start": start + i * step, "end": start + (i + 1) * step,
                           "confidence": 0.99} for i, w in enumerate(words)],
            }]},
            "metadata": {"request_id": request_id, "model_uuid": str(uuid.uuid4()),
                         "model_info": {"name": conn.query.get("model", "nova-3"),
                                        "version": "test", "arch": "test"}},
        }
        conn.results.append(message)
        await ws.send(json.dumps(message))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--key", default="test-key")
    parser.add_argument("--text", default="hello from the deepgram test server")
    parser.add_argument("--final-delay", type=float, default=0.0,
                        help="seconds from the end of the stream to the final result")
    args = parser.parse_args()
    server = DeepgramServer(args.key, args.port)
    server.default_text = args.text
    server.final_delay = args.final_delay
    server.keep = False
    server.start()
    serve_until_interrupted(server, server.port, f"deepgram stand-in on {server.url} (key {args.key!r})")


if __name__ == "__main__":
    main()
