"""Tool sources on their own: builtins, the call guard, webhooks against a local HTTP
server, MCP servers over stdio and streamable HTTP (tests/mcp_server.py)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import mcp_types as types
import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from actors.tools import Tool, ToolError, ToolSpec, openai_tool
from actors.tools.builtin import BuiltinContext, FunctionTool, build, calculator, get_time
from actors.tools.calc import CalcError, evaluate, format_number
from actors.tools.mcp_client import McpServer, McpTool, all_tools, render, server_tools
from actors.tools.spec import tool_name
from actors.tools.toolset import Toolset, parse_arguments, trim
from actors.tools.webhook import MAX_BODY_BYTES, Webhook
from bus.server import free_port
from settings.config import Config, ConfigError, McpServerConfig, ToolSettings, WebhookTool
from tests.mcp_server import FILLERS, TOOLS, HttpMcpServer
from tests.test_dialogue import bogota

__all__ = ["bogota"]  # fixtures

# --- spec ---------------------------------------------------------------------------


def test_openai_tool_shape_and_catalog_encoding() -> None:
    spec = ToolSpec(name="weather", description="Weather for a city", source="webhook",
                    parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    assert openai_tool(spec) == {"type": "function", "function": {
        "name": "weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    assert msgspec.json.decode(msgspec.json.encode(spec), type=ToolSpec) == spec
    # A newer actor's extra field does not break an older reader.
    assert msgspec.json.decode(b'{"name":"a","description":"d","added_later":1}', type=ToolSpec).name == "a"


def test_tool_names_are_made_safe() -> None:
    assert tool_name("files.read file") == "files_read_file"
    assert len(tool_name("x" * 100)) == 64 and tool_name("") == "tool"


# --- calculator -------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "expected"), [
    ("1 + 2", "3"), ("2 ** 10", "1024"), ("2^10", "1024"), ("-3 + +4", "1"), ("7 // 2", "3"),
    ("7 % 3", "1"), ("7 / 2", "3.5"), ("(1 + 2) * 3", "9"), ("0.1 + 0.2", "0.3"),
    ("sqrt(16)", "4"), ("sin(0)", "0"), ("cos(pi)", "-1"), ("log(e)", "1"), ("log(8, 2)", "3"),
    ("round(2.567, 2)", "2.57"), ("max(1, 5, 3)", "5"), ("2 ** -1", "0.5"), ("abs(-2.5)", "2.5"),
    ("floor(2.7) + ceil(2.1)", "5"), ("1e3", "1000"), ("2 ** 0.5", "1.41421356237"),
    ("10 ** 20", "100000000000000000000"), ("1 / 3", "0.333333333333"),
])
def test_calculator_evaluates(expression: str, expected: str) -> None:
    assert format_number(evaluate(expression)) == expected


@pytest.mark.parametrize(("expression", "reason"), [
    ("__import__('os')", "unknown function '__import__'"),
    ("__import__('os').system('echo pwned')", "unknown function"),
    ("9**9**9", "too large"),
    ("10 ** 400", "too large"),
    ("2 ** 1025", "too large"),
    ("10.0 ** 400", "too large"),
    ("1e308 * 10", "too large"),
    ("exp(1000)", "too large"),
    ("x + 1", "unknown name 'x'"),
    ("pi.real", "unsupported syntax (Attribute)"),
    ("().__class__.__bases__", "unsupported syntax"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("math.sqrt(4)", "unknown function 'math.sqrt'"),
    ("'a' * 10", "only numbers"),
    ("True + 1", "only numbers"),
    ("[1, 2]", "unsupported syntax (List)"),
    ("lambda: 1", "unsupported syntax (Lambda)"),
    ("1 if 1 else 2", "unsupported syntax"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("sqrt(-1)", "math domain error"),
    ("(-8) ** (1/3)", "not a real number"),
    ("0 ** -1", "negative power"),
    ("2 & 3", "operator & is not supported"),
    ("1 << 10000", "operator << is not supported"),
    ("round(1e300, -1000000000)", "ndigits"),
    ("sqrt(x=4)", "keyword"),
    ("sqrt(1, 2)", "wrong number"),
    ("", "empty"),
    ("1 +", "not a valid expression"),
    ("1" * 600, "too long"),
    ("(" * 210 + "1" + ")" * 210, "too many nested parentheses"),
    ("+".join(["1"] * 150), "too complex"),
])
def test_calculator_refuses(expression: str, reason: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CalcError) as caught:
        evaluate(expression)
    assert reason in str(caught.value)
    assert time.perf_counter() - started < 0.5  # refused before doing the work


async def test_calculator_tool_reports_errors_for_the_model() -> None:
    tool = calculator(BuiltinContext(Config()))
    assert await tool.call({"expression": "6 * 7"}) == "6 * 7 = 42"
    with pytest.raises(ToolError, match="cannot calculate '9\\*\\*9\\*\\*9': result too large"):
        await tool.call({"expression": "9**9**9"})
    with pytest.raises(ToolError, match="missing a required argument"):
        await tool.call({})
    with pytest.raises(ToolError, match="unexpected keyword"):
        await tool.call({"expression": "1", "extra": 2})


# --- get_time ---------------------------------------------------------------------

async def test_get_time_local_and_in_a_zone() -> None:
    tool = get_time(BuiltinContext(Config()))
    local = await tool.call({})
    assert "server local time" in local
    stamp = datetime.fromisoformat(local.rsplit("ISO ", 1)[1])
    assert abs(stamp - datetime.now().astimezone()) < timedelta(seconds=5)

    tokyo = await tool.call({"timezone": "Asia/Tokyo"})
    assert "Asia/Tokyo" in tokyo and "UTC+09:00" in tokyo
    assert (await tool.call({"timezone": "UTC"})).endswith("+00:00")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime"])
async def test_get_time_unknown_zone_is_a_clear_error(zone: str) -> None:
    tool = get_time(BuiltinContext(Config()))
    with pytest.raises(ToolError, match=r"unknown time zone .* IANA name"):
        await tool.call({"timezone": zone})


def test_get_time_offers_no_example_zone_to_copy() -> None:
    spec = openai_tool(get_time(BuiltinContext(Config())).spec)
    text = json.dumps(spec)
    assert not re.search(r"[A-Z][a-z]+/[A-Z]", text), text  # no Europe/Paris, no Area/City
    assert "only when the user names a place" in text


@pytest.mark.parametrize(("said", "zone", "expected"), [
    (["what time is it?"], "Europe/Paris", "local"),
    (["What's the time now, please?"], "America/New_York", "local"),
    (["use get_time"], "UTC", "local"),
    (["现在几点了？"], "Asia/Shanghai", "local"),
    (["what time is it?"], "Area/City", "local"),  # a placeholder copied: no error either
    (["what time is it in Paris?"], "Europe/Paris", "Europe/Paris"),
    (["what time is it in france"], "Europe/Paris", "Europe/Paris"),  # the country
    (["time in Tokyo please", "and now?"], "Asia/Tokyo", "Asia/Tokyo"),  # named a turn before
    (["what's the time in Beijing"], "Asia/Shanghai", "Asia/Shanghai"),  # a place it cannot map
    (["北京现在几点"], "Asia/Shanghai", "Asia/Shanghai"),
    (["what time is it in tokyo"], "tokyo", "Asia/Tokyo"),  # a city for a zone
    (["what time is it?"], "local", "local"),
    (None, "Europe/Paris", "Europe/Paris"),  # outside a session: as asked
])
def test_get_time_uses_a_zone_only_when_the_user_asked_for_it(
        bogota: None, said: list[str] | None, zone: str, expected: str) -> None:
    from actors.tools.clock import answer

    result = answer({"timezone": zone}, said)
    if expected == "local":
        assert "time zone -05 (server local time), UTC-05:00" in result, result
        assert "Paris" not in result and "/" not in result.split(";")[0]
    else:
        assert f"time zone {expected}," in result and "server local" not in result, result


def test_get_time_refuses_a_zone_it_cannot_find_when_the_user_named_one(bogota: None) -> None:
    from actors.tools.clock import answer

    with pytest.raises(ToolError, match=r"unknown time zone 'Narnia/Cair'.*IANA name"):
        answer({"timezone": "Narnia/Cair"}, ["what time is it in Narnia?"])
    assert "time zone UTC," in answer({"tz": "UTC"}, None)  # what small models call it


async def test_unknown_builtin_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown tool 'nope'; known: calculator, get_time"):
        await build("nope", BuiltinContext(Config()))


# --- the call guard ---------------------------------------------------------------

def test_arguments_parsing() -> None:
    assert parse_arguments("") == {} and parse_arguments("null") == {}
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments('"{\\"a\\": 1}"') == {"a": 1}  # encoded twice by a small model
    with pytest.raises(ToolError, match=r"not valid JSON .*line 1 column 2"):
        parse_arguments("{a: 1}")
    with pytest.raises(ToolError, match="must be a JSON object, not list"):
        parse_arguments("[1]")


def test_trim_says_it_cut() -> None:
    assert trim("short", 100) == "short"
    cut = trim("x" * 10_000, 200)
    assert len(cut) <= 200 and cut.startswith("xxx") and "result cut: 10000 characters" in cut


def _tool(name: str, fn: Any, timeout: float | None = None) -> FunctionTool:
    return FunctionTool(ToolSpec(name=name, description=name), fn, timeout)


async def _explode() -> str:
    raise RuntimeError("kaboom")


async def _hang() -> str:
    await asyncio.sleep(3600)
    return "never"


async def _stubborn() -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(5)  # ignores the first cancellation for a while
    return "late"


class _Number(Tool):
    spec = ToolSpec(name="number", description="returns an int, breaking the contract")

    async def call(self, arguments: dict[str, Any]) -> str:
        return 42  # type: ignore[return-value]


def _blocking() -> str:
    time.sleep(3)  # a synchronous tool: runs in a thread, so the loop stays free
    return "done"


@pytest.fixture
async def toolset() -> AsyncIterator[Toolset]:
    ts = Toolset(ToolSettings(timeout=0.3, max_result_chars=1000))
    for name, fn in [("explode", _explode), ("hang", _hang), ("stubborn", _stubborn),
                     ("blocking", _blocking)]:
        ts.add(_tool(name, fn))
    ts.add(_Number())
    ts.add(_tool("flood", lambda: "y" * 1_000_000))
    ts.add(_tool("patient", _hang, timeout=0.6))
    yield ts
    await ts.close()


async def test_every_call_ends_in_a_bounded_result(toolset: Toolset) -> None:
    outcome = await toolset.run("explode", "{}")
    assert outcome.is_error and outcome.content == "explode failed: RuntimeError: kaboom"
    for name in ("hang", "stubborn", "blocking"):
        started = time.perf_counter()
        outcome = await toolset.run(name, "{}")
        assert outcome.is_error and outcome.content == f"{name} did not finish within 0.3 s"
        assert time.perf_counter() - started < 2  # none of them was waited for
    started = time.perf_counter()
    assert (await toolset.run("patient", "")).content == "patient did not finish within 0.6 s"
    assert 0.55 < time.perf_counter() - started < 2
    flood = await toolset.run("flood", "{}")
    assert not flood.is_error and len(flood.content) <= 1000 and "result cut" in flood.content
    assert (await toolset.run("number", "{}")).content == "number returned int, not text"
    unknown = await toolset.run("nope", "{}")
    assert unknown.is_error and unknown.content.startswith("unknown tool 'nope'; available: blocking,")
    bad = await toolset.run("explode", "{oops")
    assert bad.is_error and bad.content.startswith("explode: the arguments are not valid JSON")


async def test_calls_run_side_by_side(toolset: Toolset) -> None:
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(toolset.run("hang", "{}") for _ in range(10)))
    assert all(o.is_error for o in outcomes) and time.perf_counter() - started < 2  # not 10 × 0.3


def test_names_stay_unique() -> None:
    ts = Toolset(ToolSettings())
    ts.add(_tool("a", _hang))
    assert ts.add(_tool("a", _hang)).spec.name == "a_2"
    files = McpServer(McpServerConfig(name="files", url="http://127.0.0.1:9/mcp"), 1.0)
    remote = types.Tool(name="a", input_schema={"type": "object"})
    clash = ts.add(McpTool(files, remote))
    assert (clash.spec.name, clash.remote_name) == ("files_a", "a")  # called by its own name
    assert sorted(ts.tools) == ["a", "a_2", "files_a"]


# --- webhooks ---------------------------------------------------------------------

class ThreadedServer:
    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "test server did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


async def _weather(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"city": body["city"], "sky": "clear",
                         "auth": request.headers.get("authorization")})


async def _broken(request: Request) -> Response:
    return PlainTextResponse("database down", status_code=500)


async def _slow(request: Request) -> Response:
    await asyncio.sleep(2)
    return PlainTextResponse("too late")


async def _huge(request: Request) -> Response:
    return PlainTextResponse("z" * (2 * MAX_BODY_BYTES))


@pytest.fixture(scope="module")
def hooks() -> Iterator[ThreadedServer]:
    server = ThreadedServer(Starlette(routes=[
        Route("/weather", _weather, methods=["POST"]), Route("/broken", _broken, methods=["POST"]),
        Route("/slow", _slow, methods=["POST"]), Route("/huge", _huge, methods=["POST"]),
    ])).start()
    yield server
    server.stop()


def _hook(name: str, url: str, **extra: Any) -> WebhookTool:
    return WebhookTool(name=name, description=name, url=url, **extra)


async def test_webhook_posts_arguments_and_returns_the_body(
        hooks: ThreadedServer, toolset: Toolset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEATHER_TOKEN", "s3cret")
    tool = Webhook(_hook("weather", hooks.url("/weather"),
                         headers={"Authorization": "Bearer ${WEATHER_TOKEN}"}), toolset.http, 5.0)
    assert tool.spec.source == "webhook"
    assert msgspec.json.decode(await tool.call({"city": "Oslo"})) == {
        "city": "Oslo", "sky": "clear", "auth": "Bearer s3cret"}


async def test_webhook_failures_read_as_errors(hooks: ThreadedServer, toolset: Toolset) -> None:
    broken = Webhook(_hook("broken", hooks.url("/broken")), toolset.http, 5.0)
    with pytest.raises(ToolError, match=r"broken failed: HTTP 500 Internal Server Error: database down"):
        await broken.call({})
    slow = Webhook(_hook("slow", hooks.url("/slow"), timeout=0.3), toolset.http, 5.0)
    started = time.perf_counter()
    with pytest.raises(ToolError, match=r"webhook slow did not answer within 0\.3 s"):
        await slow.call({})
    assert time.perf_counter() - started < 1.5
    gone = Webhook(_hook("gone", f"http://127.0.0.1:{free_port()}/x"), toolset.http, 5.0)
    with pytest.raises(ToolError, match="webhook gone is unreachable"):
        await gone.call({})
    huge = await Webhook(_hook("huge", hooks.url("/huge")), toolset.http, 5.0).call({})
    assert len(huge) < MAX_BODY_BYTES + 100 and huge.endswith(f"[response cut after {MAX_BODY_BYTES} bytes]")


def test_webhook_missing_secret_is_a_config_error(toolset: Toolset,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match=r"\$\{NOT_SET_ANYWHERE\} is not set"):
        Webhook(_hook("w", "http://x", headers={"X-Key": "${NOT_SET_ANYWHERE}"}), toolset.http, 5.0)


# --- MCP --------------------------------------------------------------------------

STDIO = [sys.executable, "-m", "tests.mcp_server"]


@pytest.fixture(scope="module")
def mcp_http() -> Iterator[HttpMcpServer]:
    server = HttpMcpServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_mcp_lists_every_page_and_calls(transport: str, mcp_http: HttpMcpServer) -> None:
    config = (McpServerConfig(name="t", command=STDIO) if transport == "stdio"
              else McpServerConfig(name="t", url=mcp_http.url))
    server = McpServer(config, 20.0)
    try:
        tools = await server_tools(server)
        # PAGE_SIZE 2: four pages, all followed.
        assert [t.spec.name for t in tools] == [t.name for t in TOOLS] and len(TOOLS) == 5 + FILLERS
        add = tools[0]
        assert add.spec.source == "mcp:t" and add.spec.parameters["required"] == ["a", "b"]
        assert await add.call({"a": 2, "b": 3}) == "5"
        assert await server.call("echo", {"text": "hi"}) == "echo:\nhi"  # text parts joined
        with pytest.raises(ToolError, match="the tool failed on purpose"):
            await server.call("fail", {})
        with pytest.raises(ToolError, match="MCP server t: crash failed"):
            await server.call("crash", {})
        # A closed session is reopened by the next call.
        await server.close()
        assert not server.connected
        assert await server.call("add", {"a": 1, "b": 1}) == "2"
    finally:
        await server.close()


async def test_mcp_server_that_is_down_gives_no_tools_and_clear_errors() -> None:
    dead = McpServer(McpServerConfig(name="dead", command=[sys.executable, "-c", "pass"]), 5.0)
    mute = McpServer(McpServerConfig(name="mute", command=[
        sys.executable, "-c", "import time; time.sleep(60)"]), 1.0)
    try:
        assert await server_tools(dead) == []
        with pytest.raises(ToolError, match="MCP server dead is unavailable"):
            await dead.call("x", {})
        started = time.perf_counter()
        with pytest.raises(ToolError, match="MCP server mute did not answer within 1 s"):
            await mute.call("x", {})
        assert time.perf_counter() - started < 5
    finally:
        await asyncio.gather(dead.close(), mute.close())


def test_mcp_config_needs_one_transport() -> None:
    with pytest.raises(ConfigError, match="exactly one of command"):
        McpServer(McpServerConfig(name="x"), 1.0)
    with pytest.raises(ConfigError, match="exactly one of command"):
        McpServer(McpServerConfig(name="x", command=["a"], url="http://b"), 1.0)


class _Pages:
    def __init__(self, pages: dict[str | None, tuple[list[str], str | None]]) -> None:
        self.pages = pages
        self.asked: list[str | None] = []

    async def list_tools(self, *, cursor: str | None = None) -> types.ListToolsResult:
        self.asked.append(cursor)
        names, nxt = self.pages[cursor]
        return types.ListToolsResult(tools=[types.Tool(name=n, input_schema={"type": "object"})
                                            for n in names], next_cursor=nxt)


async def test_paging_follows_cursors_and_stops_on_a_loop() -> None:
    pages = _Pages({None: (["a"], "p2"), "p2": (["b"], "p3"), "p3": (["c"], None)})
    assert [t.name for t in await all_tools(pages)] == ["a", "b", "c"]
    looping = _Pages({None: (["a"], "p2"), "p2": (["b"], "p2")})
    assert [t.name for t in await all_tools(looping)] == ["a", "b"]
    assert looping.asked == [None, "p2"]


def test_render_names_what_is_not_text() -> None:
    result = types.CallToolResult(content=[
        types.TextContent(text="one"),
        types.ImageContent(data="AAAA", mime_type="image/png"),
        types.EmbeddedResource(resource=types.TextResourceContents(uri="file:///a", text="inside")),
    ])
    assert render(result) == "one\n[image content]\ninside"
    assert render(types.CallToolResult(content=[], structured_content={"t": 1})) == '{"t": 1}'
