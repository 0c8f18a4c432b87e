"""Webhook tools from `[[tools.webhooks]]`: the call's JSON arguments are POSTed to the
URL and the response body is the result.

`httpx2` is the HTTP client the `openai` and `mcp` SDKs already bring in (this
environment has no `httpx`). One client is shared by every webhook, for its
connection pool.
"""

from __future__ import annotations

from typing import Any

import httpx2

from actors.tools.secrets import expand_all
from actors.tools.spec import Tool, ToolError, ToolSpec
from settings.config import WebhookTool as WebhookConfig

MAX_BODY_BYTES = 1 << 20  # read no more: the result is cut to max_result_chars anyway


def client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(follow_redirects=True, headers={"User-Agent": "vagent-tools"})


class Webhook(Tool):
    def __init__(self, config: WebhookConfig, http: httpx2.AsyncClient, default_timeout: float) -> None:
        self.config = config
        self.http = http
        self.timeout = config.timeout
        self.default_timeout = default_timeout
        # Resolved once, at start: a missing secret is a configuration error, not a call error.
        self.headers = expand_all(config.headers, f"tools.webhooks[{config.name}].headers")
        self.spec = ToolSpec(name=config.name, description=config.description,
                             parameters=config.parameters, source="webhook")

    async def call(self, arguments: dict[str, Any]) -> str:
        name, timeout = self.config.name, self.timeout or self.default_timeout
        try:
            async with self.http.stream("POST", self.config.url, json=arguments, headers=self.headers,
                                        timeout=timeout) as response:
                body, cut = await _read(response)
        except httpx2.TimeoutException:
            raise ToolError(f"webhook {name} did not answer within {timeout:g} s") from None
        except httpx2.HTTPError as exc:
            raise ToolError(f"webhook {name} is unreachable: {exc or type(exc).__name__}") from None
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if cut:
            text += f"\n[response cut after {MAX_BODY_BYTES} bytes]"
        if not response.is_success:
            # The body usually says why (a validation message the model can act on).
            raise ToolError(f"webhook {name} failed: HTTP {response.status_code} "
                            f"{response.reason_phrase}: {text[:2000]}".rstrip(": "))
        return text


async def _read(response: httpx2.Response) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"".join(chunks)[:MAX_BODY_BYTES], True
    return b"".join(chunks), False
