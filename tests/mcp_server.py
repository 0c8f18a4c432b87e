"""A tiny MCP server for the tools tests, built on the `mcp` SDK's low-level server.

It pages `tools/list` (PAGE_SIZE tools per page, an opaque `nextCursor`) so the
client's paging is exercised over a real transport. Tools: `add`, `echo`, `fail`
(an `isError` result), `crash` (the handler raises: a protocol error), `slow`
(sleeps), and a few `noop_<n>` fillers to make more than one page.

    uv run python -m tests.mcp_server                 # stdio
    uv run python -m tests.mcp_server --http 8765     # streamable HTTP at /mcp
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from bus.server import free_port
from devservers.threaded_server import ThreadedServer

PAGE_SIZE = 2
FILLERS = 3


def _tool(name: str, description: str, properties: dict[str, Any] | None = None,
          required: list[str] | None = None) -> types.Tool:
    schema: dict[str, Any] = {"type": "object", "properties": properties or {}}
    if required:
        schema["required"] = required
    return types.Tool(name=name, description=description, input_schema=schema)


TOOLS: list[types.Tool] = [
    _tool("add", "Add two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"]),
    _tool("echo", "Echo the text back", {"text": {"type": "string"}}, ["text"]),
    _tool("fail", "Always reports a tool error"),
    _tool("crash", "Its handler raises"),
    _tool("slow", "Sleeps for `seconds`", {"seconds": {"type": "number"}}),
    *(_tool(f"noop_{i}", "Does nothing") for i in range(FILLERS)),
]


def _text(*parts: str, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=p) for p in parts], is_error=error)


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    start = int(params.cursor) if params and params.cursor else 0
    end = start + PAGE_SIZE
    return types.ListToolsResult(tools=TOOLS[start:end],
                                 next_cursor=str(end) if end < len(TOOLS) else None)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    match params.name:
        case "add":
            return _text(str(args["a"] + args["b"]))
        case "echo":
            # Two text parts: the client joins them.
            return _text("echo:", str(args.get("text", "")))
        case "fail":
            return _text("the tool failed on purpose", error=True)
        case "crash":
            raise RuntimeError("crashed on purpose")
        case "slow":
            await anyio.sleep(float(args.get("seconds", 5)))
            return _text("slept")
        case name if name.startswith("noop_"):
            return _text("ok")
    raise ValueError(f"unknown tool {params.name}")


def make_server() -> Server[Any]:
    return Server("vagent-test", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio() -> None:
    server = make_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


class HttpMcpServer:
    """The same server over streamable HTTP (uvicorn in a thread), for in-process tests."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self._runner: ThreadedServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> HttpMcpServer:
        self._runner = ThreadedServer(make_server().streamable_http_app(), self.port, lifespan="auto")
        self._runner.start()
        return self

    def stop(self) -> None:
        if self._runner:
            self._runner.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on PORT")
    args = parser.parse_args()
    if args.http:
        server = HttpMcpServer(args.http).start()
        print(f"MCP test server at {server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.stop()
    else:
        anyio.run(serve_stdio)
