"""Tools of configured MCP servers (`[[tools.mcp]]`), through the official `mcp` SDK.

Each server gets one long-lived session. The SDK's client is an anyio context
manager whose cancel scopes must be left by the task that entered them, while
the actor's setup and teardown may run in different tasks: so a task of its own
holds each session open, and calls from any task go through it. A session that
drops is reopened by the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters

from actors.tools.secrets import expand_all
from actors.tools.spec import Tool, ToolError, ToolSpec, tool_name
from settings.config import ConfigError, McpServerConfig

log = logging.getLogger("vagent.tools.mcp")

MAX_PAGES = 100  # a server whose cursor never ends cannot hang start-up
CLOSE_TIMEOUT = 10.0  # the SDK bounds its own stdio shutdown to ~5 s


def describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # anyio task groups wrap errors
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    return str(exc) or type(exc).__name__


class Pager(Protocol):
    async def list_tools(self, *, cursor: str | None = None) -> types.ListToolsResult: ...


async def all_tools(client: Pager) -> list[types.Tool]:
    """Every page of `tools/list`, following `nextCursor`."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor or cursor in seen:  # a repeated cursor would loop forever
            break
        seen.add(cursor)
    return tools


def render(result: types.CallToolResult) -> str:
    """The result's text parts, joined; other content is named, not dropped silently."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource) and isinstance(
                block.resource, types.TextResourceContents):
            parts.append(block.resource.text)
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _target(config: McpServerConfig) -> StdioServerParameters | str:
    where = f"tools.mcp[{config.name}]"
    if bool(config.command) == bool(config.url):
        raise ConfigError(f"{where}: set exactly one of command (stdio) or url (streamable HTTP)")
    if config.command:
        return StdioServerParameters(command=config.command[0], args=config.command[1:],
                                     env=expand_all(config.env, f"{where}.env") or None)
    assert config.url
    return config.url


class McpServer:
    def __init__(self, config: McpServerConfig, default_timeout: float) -> None:
        self.name = config.name
        self.timeout = config.timeout or default_timeout
        self._target = _target(config)  # a config error surfaces at start-up
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> None:
        async with self._lock:
            if self._client is not None:
                return
            await self._end()  # a dropped session's task
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Retrieved here, so a failure after our wait gave up is not reported as lost.
            ready.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._hold(ready, self._stop), name=f"mcp:{self.name}")
            try:
                await asyncio.wait_for(asyncio.shield(ready), self.timeout)
            except TimeoutError:
                # Shutting the server down takes seconds (stdin, SIGTERM, SIGKILL): the caller
                # does not wait for it; the next connect or close does.
                self._task.cancel()
                raise ToolError(f"MCP server {self.name} did not answer within {self.timeout:g} s"
                                ) from None
            except Exception as exc:
                raise ToolError(f"MCP server {self.name} is unavailable: {describe(exc)}") from None

    async def _hold(self, ready: asyncio.Future[None], stop: asyncio.Event) -> None:
        try:
            async with Client(self._target, read_timeout_seconds=self.timeout) as client:
                self._client = client
                ready.set_result(None)
                await stop.wait()
        except asyncio.CancelledError:
            ready.cancel()
            raise
        except Exception as exc:
            if ready.done():
                log.warning("MCP session lost", extra={"server": self.name, "error": describe(exc)})
            else:
                ready.set_exception(exc)
        finally:
            self._client = None

    async def _end(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        async with self._lock:
            await self._end()

    async def _session(self) -> Client:
        if self._client is None:
            await self.connect()
        if self._client is None:  # dropped again at once
            raise ToolError(f"MCP server {self.name} is unavailable")
        return self._client

    async def list_tools(self) -> list[types.Tool]:
        client = await self._session()
        try:
            return await all_tools(client)
        except Exception as exc:
            raise ToolError(f"MCP server {self.name}: tools/list failed: {describe(exc)}") from None

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        client = await self._session()
        try:
            result = await client.call_tool(name, arguments, read_timeout_seconds=self.timeout)
        except Exception as exc:
            raise ToolError(f"MCP server {self.name}: {name} failed: {describe(exc)}") from None
        text = render(result)
        if result.is_error:
            raise ToolError(text or f"{name} failed")
        return text


class McpTool(Tool):
    def __init__(self, server: McpServer, remote: types.Tool) -> None:
        self.server = server
        self.remote_name = remote.name  # the name the server knows; spec.name may be renamed
        self.timeout = server.timeout
        self.spec = ToolSpec(
            name=tool_name(remote.name),
            description=remote.description or remote.title or remote.name,
            parameters=remote.input_schema,
            source=f"mcp:{server.name}",
        )

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self.server.call(self.remote_name, arguments)


async def server_tools(server: McpServer, level: int = logging.ERROR) -> list[McpTool]:
    """Connect and list; a server that is down gives no tools for now (the actor retries,
    at a lower log level)."""
    try:
        return [McpTool(server, t) for t in await server.list_tools()]
    except ToolError as exc:
        log.log(level, "MCP server unavailable; its tools are missing until it answers",
                extra={"server": server.name, "error": str(exc)})
        return []
