"""The edge as the MCP client of a xiaozhi device (DESIGN §5): JSON-RPC 2.0 over the
device's socket, wrapped in `{"type":"mcp","payload":…}`.

`initialize` (protocolVersion 2024-11-05), `notifications/initialized`, `tools/list`
page by page (`cursor` / `nextCursor`), then `tools/call {name, arguments}` for each
`tool.call` the dialogue routes to the device. Request ids are integers: the firmware
ignores requests whose id is not a number.

Device tool names ("self.audio_speaker.set_volume") are not valid LLM function names
(letters, digits, `_` and `-` only): the session sees them as "self_audio_speaker_set_volume"
and calls are mapped back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from schemas import SessionToolSpec

log = logging.getLogger("vagent.edge.xiaozhi.mcp")
PROTOCOL_VERSION = "2024-11-05"
REQUEST_TIMEOUT = 10.0
CALL_TIMEOUT = 15.0
MAX_PAGES = 32
MAX_TOOLS = 128
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
Send = Callable[[dict[str, Any]], Awaitable[None]]


class McpError(Exception):
    """The device answered with a JSON-RPC error, or not in time, or nonsense."""


@dataclass(frozen=True, slots=True)
class CallResult:
    content: str
    is_error: bool


def llm_name(name: str) -> str:
    return _INVALID.sub("_", name)[:64] or "tool"


class McpClient:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.names: dict[str, str] = {}  # the session's name → the device's
        self.server_info: dict[str, Any] = {}

    # --- the device's answers ------------------------------------------------------------

    def received(self, payload: object) -> None:
        """A `mcp` message from the device: the answer to one of our requests (the device
        sends no requests of its own to a server; notifications are ignored)."""
        if not isinstance(payload, dict) or "id" not in payload:
            return
        future = self._pending.pop(payload["id"], None) if isinstance(payload["id"], int) else None
        if future is None or future.done():
            log.debug("an MCP answer to no pending request", extra={"id": payload.get("id")})
            return
        future.set_result(payload)

    def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(McpError("the device disconnected"))
        self._pending.clear()

    # --- requests ------------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any], timeout: float = REQUEST_TIMEOUT
                      ) -> dict[str, Any]:
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            try:
                # asyncio.timeout: 3.11's wait_for can swallow the call task's cancellation.
                async with asyncio.timeout(timeout):
                    answer = await future
            except TimeoutError:
                raise McpError(f"the device did not answer {method} within {timeout:.0f} s") from None
        finally:
            self._pending.pop(rid, None)
        if "error" in answer:
            error = answer["error"]
            message = error.get("message") if isinstance(error, dict) else None
            raise McpError(str(message or error))
        result = answer.get("result")
        if not isinstance(result, dict):
            raise McpError(f"{method}: the device's result is not an object")
        return result

    async def notify(self, method: str) -> None:
        await self._send({"jsonrpc": "2.0", "method": method})

    async def initialize(self, vision: dict[str, str] | None = None) -> list[SessionToolSpec]:
        """The handshake and the device's whole tool list, as the session's tools. `vision`
        ({url, token}): where the device's camera tool posts its photos."""
        result = await self.request("initialize", {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {"vision": vision} if vision else {},
            "clientInfo": {"name": "vagent", "version": version("vagent")}})
        self.server_info = result.get("serverInfo") or {}
        await self.notify("notifications/initialized")
        specs: list[SessionToolSpec] = []
        cursor = ""
        for _ in range(MAX_PAGES):
            page = await self.request("tools/list", {"cursor": cursor} if cursor else {})
            for tool in page.get("tools") or []:
                spec = self._spec(tool)
                if spec is not None and len(specs) < MAX_TOOLS:
                    specs.append(spec)
            cursor = page.get("nextCursor") or ""
            if not isinstance(cursor, str) or not cursor:
                break
        return specs

    def _spec(self, tool: object) -> SessionToolSpec | None:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            return None
        name = llm_name(tool["name"])
        if name in self.names:
            return None
        self.names[name] = tool["name"]
        schema = tool.get("inputSchema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            schema = {"type": "object", "properties": {}}
        return SessionToolSpec(name=name, description=str(tool.get("description") or ""),
                               parameters=schema)

    async def call(self, name: str, arguments: str, timeout: float = CALL_TIMEOUT) -> CallResult:
        """Call a device tool by its session name; every failure is an error result the
        model can read."""
        device_name = self.names.get(name)
        if device_name is None:
            return CallResult(f"the device has no tool {name!r}", True)
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return CallResult(f"the arguments are not valid JSON: {exc}", True)
        if not isinstance(args, dict):
            return CallResult("the arguments must be a JSON object", True)
        try:
            result = await self.request("tools/call", {"name": device_name, "arguments": args},
                                        timeout)
        except McpError as exc:
            return CallResult(f"the device failed: {exc}", True)
        content = result.get("content")
        texts = [str(item.get("text", "")) for item in content or []
                 if isinstance(item, dict) and item.get("type") == "text"] \
            if isinstance(content, list) else []
        text = "\n".join(texts) if texts else json.dumps(result, ensure_ascii=False)
        return CallResult(text, bool(result.get("isError")))
