"""The tools one actor serves, and running one call so that it always ends in a result.

A tool may raise, hang, ignore cancellation or return megabytes: every call still
ends within its timeout with a bounded text, flagged as an error when it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.tools import builtin, webhook
from actors.tools.mcp_client import McpServer, McpTool, server_tools
from actors.tools.spec import Tool, ToolError, ToolSpec
from bus.client import Bus
from settings.config import Config, ToolSettings

log = logging.getLogger("vagent.tools")


@dataclass(frozen=True, slots=True)
class Outcome:
    content: str
    is_error: bool = False


def parse_arguments(text: str) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
        if isinstance(value, str) and value.strip().startswith("{"):
            value = json.loads(value)  # small models sometimes encode the object twice
    except json.JSONDecodeError as exc:
        raise ToolError(f"the arguments are not valid JSON ({exc.msg} at line {exc.lineno} "
                        f"column {exc.colno}): {text[:200]}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ToolError(f"the arguments must be a JSON object, not {type(value).__name__}: "
                        f"{text[:200]}")
    return value


def trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    note = f"\n[result cut: {len(text)} characters, only the first part shown]"
    return text[:max(0, limit - len(note))] + note[:limit]


class Toolset:
    def __init__(self, settings: ToolSettings) -> None:
        self.settings = settings
        self.tools: dict[str, Tool] = {}
        self.mcp: list[McpServer] = []
        self.http = webhook.client()

    def add(self, tool: Tool) -> Tool:
        """Add under a unique name: an MCP tool named like another gets its server's prefix."""
        name = tool.spec.name
        if name in self.tools and isinstance(tool, McpTool):
            name = f"{tool.server.name}_{name}"[:64]
        base, n = name, 2
        while name in self.tools:
            name, n = f"{base[:60]}_{n}", n + 1
        if name != tool.spec.name:
            log.warning("tool renamed to stay unique", extra={"tool": tool.spec.name, "as": name})
            tool.spec.name = name
        self.tools[name] = tool
        return tool

    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools.values()]

    async def add_mcp_tools(self, server: McpServer) -> list[ToolSpec]:
        """The tools of a server that was down at start-up, once it answers."""
        return [self.add(tool).spec for tool in await server_tools(server, logging.INFO)]

    async def run(self, name: str, arguments: str) -> Outcome:
        tool = self.tools.get(name)
        if tool is None:
            return Outcome(f"unknown tool {name!r}; available: {', '.join(sorted(self.tools))}", True)
        try:
            args = parse_arguments(arguments)
        except ToolError as exc:
            return Outcome(trim(f"{name}: {exc}", self.settings.max_result_chars), True)
        outcome = await self._call(tool, args)
        return Outcome(trim(outcome.content, self.settings.max_result_chars), outcome.is_error)

    async def _call(self, tool: Tool, args: dict[str, Any]) -> Outcome:
        name, timeout = tool.spec.name, tool.timeout or self.settings.timeout
        # A task of its own: a tool that swallows cancellation cannot hold the result back.
        task = asyncio.create_task(tool.call(args), name=f"tool:{name}")
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_retrieve)
            log.warning("tool timed out", extra={"tool": name, "timeout": timeout})
            return Outcome(f"{name} did not finish within {timeout:g} s", True)
        try:
            result = task.result()
        except ToolError as exc:
            return Outcome(str(exc), True)
        except Exception as exc:
            log.error("tool failed", extra={"tool": name}, exc_info=exc)
            return Outcome(f"{name} failed: {type(exc).__name__}: {exc}", True)
        if not isinstance(result, str):
            return Outcome(f"{name} returned {type(result).__name__}, not text", True)
        return Outcome(result)

    async def close(self) -> None:
        for tool in self.tools.values():
            with contextlib.suppress(Exception):
                await tool.close()
        await asyncio.gather(*(s.close() for s in self.mcp), return_exceptions=True)
        await self.http.aclose()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a late failure of an abandoned call is not worth a warning


async def build(config: Config, bus: Bus | None = None, data_dir: Path | None = None) -> Toolset:
    """Builtins named in the config, then webhooks, then every MCP server's tools."""
    settings = config.tools
    toolset = Toolset(settings)
    try:
        ctx = builtin.BuiltinContext(config=config, bus=bus, data_dir=data_dir)
        for name in settings.builtins:
            toolset.add(await builtin.build(name, ctx))
        for hook in settings.webhooks:
            toolset.add(webhook.Webhook(hook, toolset.http, settings.timeout))
        toolset.mcp = [McpServer(c, settings.timeout) for c in settings.mcp]  # config errors here
        # Connected together: start-up waits for the slowest server, not their sum.
        for tools in await asyncio.gather(*(server_tools(s) for s in toolset.mcp)):
            for tool in tools:
                toolset.add(tool)
    except BaseException:
        await toolset.close()
        raise
    return toolset
