"""`vagent echo-llm`: a small server that speaks OpenAI's chat-completions wire protocol
(streaming SSE), with no model behind it: for trying vagent without one, as the instant
provider of `vagent bench dialogue` (so the figures are vagent's own overhead), and for
the tests, where the real `openai` SDK talks to it.

It answers "You said: <last user text>" word by word, or "你说：<text>" to text written in
Chinese, as a model answers in the language it is spoken to (a message with an image in it:
"You showed a <mime> image and said: <text>"), with `token_delay` seconds between tokens,
and records every request.
When the request offers tools and the user mentions one by name ("use get_time"), it
streams a call to that tool instead (arguments from `tool_arguments`); after a tool
result it answers "The tool said: <result>.". `fail_status` / `fail_times` make it
answer with HTTP errors, `first_token_delay` makes it slow to start; `streams` says which
answers were read to their end and which the client broke off.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bus.server import free_port
from devservers.threaded_server import ThreadedServer
from domain.language import text_language


class OpenAIServer:
    def __init__(self, port: int = 0, token_delay: float = 0.0) -> None:
        self.port = port or free_port()
        self.token_delay = token_delay
        self.fail_status: int | None = None  # answer with this HTTP error …
        self.fail_times: int | None = None  # … this many times (None: every time)
        self.first_token_delay = 0.0
        self.tool_arguments: dict[str, str] = {}  # tool name -> arguments JSON it is called with
        self.follow_ups: list[str] = []  # tools to call next, one per tool result, while offered
        # Like a small local model: tool calls as bare JSON in the text, and only when the
        # question comes without earlier conversation.
        self.small_model = False
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header
        # How each streamed text answer ended: "done", or "aborted" when the client closed
        # the connection first (an interrupted turn closes its request).
        self.streams: list[str] = []
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models),
        ])
        self._runner: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        if messages and messages[-1]["role"] == "tool":
            return f"The tool said: {messages[-1]['content']}."
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if isinstance(last, list):  # content parts: text and images (data URLs)
            text = " ".join(p["text"] for p in last if p.get("type") == "text")
            images = [p["image_url"]["url"] for p in last if p.get("type") == "image_url"]
            mime = images[0].partition(";")[0].removeprefix("data:") if images else "no"
            return f"You showed a {mime} image and said: {text}."
        if text_language(last) == "zh":
            return f"你说：{last}"
        return f"You said: {last}."

    def tool_calls_for(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        messages = body["messages"]
        if not body.get("tools"):
            return []
        names = [t["function"]["name"] for t in body["tools"]]
        if self.small_model and len(messages) > 2:
            return []
        if messages[-1]["role"] == "tool":
            wanted = [self.follow_ups.pop(0)] if self.follow_ups else []
        elif messages[-1]["role"] == "user":
            wanted = [n for n in names if n in messages[-1]["content"]]
        else:
            return []
        return [{"index": i, "id": f"call_{len(self.requests)}_{i}", "type": "function",
                 "function": {"name": n, "arguments": self.tool_arguments.get(n, "{}")}}
                for i, n in enumerate(wanted)]

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.authorizations.append(request.headers.get("authorization"))
        if self.fail_status and (self.fail_times is None or self.fail_times > 0):
            if self.fail_times is not None:
                self.fail_times -= 1
            return JSONResponse({"error": {"message": "unavailable", "type": "server_error"}},
                                status_code=self.fail_status)
        text = self.reply_for(body["messages"])
        words = text.split(" ")
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        model = body.get("model", "echo")
        usage = {"prompt_tokens": sum(len(str(m.get("content") or "").split()) for m in body["messages"]),
                 "completion_tokens": len(tokens), "total_tokens": 0}
        if not body.get("stream"):
            return JSONResponse({
                "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
            })

        async def events() -> AsyncIterator[str]:
            def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
                return "data: " + json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }) + "\n\n"

            if self.first_token_delay:
                await asyncio.sleep(self.first_token_delay)
            calls = self.tool_calls_for(body)
            if calls and self.small_model:
                for call in calls:
                    bare = {"name": call["function"]["name"],
                            "arguments": json.loads(call["function"]["arguments"])}
                    yield chunk({"content": json.dumps(bare)})
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
                return
            if calls:
                for call in calls:  # name first, then the arguments in two pieces, like OpenAI
                    args = call["function"]["arguments"]
                    head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
                    yield chunk({"role": "assistant", "tool_calls": [head]})
                    for part in (args[: len(args) // 2], args[len(args) // 2:]):
                        yield chunk({"tool_calls": [{"index": call["index"],
                                                     "function": {"arguments": part}}]})
                yield chunk({}, "tool_calls")
                yield "data: [DONE]\n\n"
                return
            yield chunk({"role": "assistant", "content": ""})
            ended = "aborted"
            try:
                for token in tokens:
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    yield chunk({"content": token})
                ended = "done"
            finally:
                self.streams.append(ended)
            yield chunk({}, "stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield "data: " + json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model, "choices": [], "usage": usage,
                }) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def start(self) -> OpenAIServer:
        self._runner = ThreadedServer(self.app, self.port)
        self._runner.start()
        return self

    def stop(self) -> None:
        if self._runner:
            self._runner.stop()


def serve(port: int, token_delay: float, first_token_delay: float = 0.0) -> None:
    server = OpenAIServer(port, token_delay)
    server.first_token_delay = first_token_delay
    server.start()
    print(f"OpenAI-compatible echo server at {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
