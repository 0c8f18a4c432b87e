"""Built-in tools, and the registry the config's `tools.builtins` names are looked up in.

Adding one (e.g. `knowledge_search` for #7): write a factory
`def make(ctx: BuiltinContext) -> Tool` (it may be `async`; a slow model load is
fine there) in any module, add `"knowledge_search": "package.module:make"` to
BUILTINS, and list the name in `vagent.toml`'s `[tools] builtins`. Modules are
imported only when their tool is configured, so heavy dependencies load only
where they are used.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from actors.config import Config, ConfigError
from actors.tools.calc import CalcError, evaluate, format_number
from actors.tools.spec import Tool, ToolError, ToolSpec
from bus.client import Bus


@dataclass(frozen=True)
class BuiltinContext:
    """What a builtin factory may use."""

    config: Config
    bus: Bus | None = None


BuiltinFactory = Callable[[BuiltinContext], Tool | Awaitable[Tool]]

# name -> "module:factory", imported lazily (like actors/registry.py).
BUILTINS: dict[str, str] = {
    "get_time": "actors.tools.builtin:get_time",
    "calculator": "actors.tools.builtin:calculator",
}


async def build(name: str, ctx: BuiltinContext) -> Tool:
    try:
        module, _, attr = BUILTINS[name].partition(":")
    except KeyError:
        raise ConfigError(f"tools.builtins: unknown tool {name!r}; known: "
                          f"{', '.join(sorted(BUILTINS))}") from None
    factory: BuiltinFactory = getattr(importlib.import_module(module), attr)
    tool = factory(ctx)
    return await tool if inspect.isawaitable(tool) else tool


class FunctionTool(Tool):
    """A tool made of a plain function; a synchronous one runs in a thread, so a slow
    call cannot stall the event loop and its timeout still answers the call."""

    def __init__(self, spec: ToolSpec, fn: Callable[..., Any], timeout: float | None = None) -> None:
        self.spec = spec
        self.fn = fn
        self.timeout = timeout

    async def call(self, arguments: dict[str, Any]) -> str:
        try:
            inspect.signature(self.fn).bind(**arguments)
        except TypeError as exc:  # unexpected or missing arguments: the model can fix its call
            raise ToolError(f"{self.spec.name}: {exc}") from None
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(**arguments)
        else:
            result = await asyncio.to_thread(self.fn, **arguments)
        return result if isinstance(result, str) else str(result)


def _now(timezone: str | None = None) -> str:
    if timezone is not None and not isinstance(timezone, str):
        raise ToolError("timezone must be a string such as 'Europe/Paris'")
    if timezone and timezone.strip() and timezone.strip().lower() != "local":
        try:
            zone = ZoneInfo(timezone.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {timezone!r}; use an IANA name such as "
                            "'Europe/Paris', 'America/New_York' or 'UTC'") from None
        now = datetime.now(zone)
        label = zone.key
    else:
        now = datetime.now().astimezone()
        label = f"{now.tzname()} (server local time)"
    offset = now.strftime("%z")
    return (f"{now:%A %d %B %Y, %H:%M:%S} {label}, UTC{offset[:3]}:{offset[3:]}; "
            f"ISO {now.isoformat(timespec='seconds')}")


def get_time(ctx: BuiltinContext) -> Tool:
    return FunctionTool(ToolSpec(
        name="get_time",
        description="The current date and time, in a given time zone or the server's local time.",
        parameters={"type": "object", "properties": {"timezone": {
            "type": "string",
            "description": "IANA time zone name such as 'Europe/Paris'; omit for local time",
        }}},
    ), _now)


def _calculate(expression: str) -> str:
    if isinstance(expression, int | float):
        expression = str(expression)
    if not isinstance(expression, str):
        raise ToolError("expression must be a string such as '2 * (3 + 4)'")
    try:
        return f"{expression.strip()} = {format_number(evaluate(expression))}"
    except CalcError as exc:
        raise ToolError(f"cannot calculate {expression!r}: {exc}") from None


def calculator(ctx: BuiltinContext) -> Tool:
    return FunctionTool(ToolSpec(
        name="calculator",
        description=("Evaluate an arithmetic expression exactly: numbers, + - * / // % ** (or ^), "
                     "parentheses, sqrt exp log log10 log2 sin cos tan asin acos atan atan2 hypot "
                     "degrees radians floor ceil abs round min max, constants pi e tau."),
        parameters={"type": "object", "properties": {"expression": {
            "type": "string", "description": "e.g. '(3 + 4) * sqrt(2)'",
        }}, "required": ["expression"]},
    ), _calculate)
