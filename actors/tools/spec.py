"""What a tool is: its spec (what the LLM is offered) and the call it answers."""

from __future__ import annotations

import abc
import re
from typing import Any

import msgspec

# OpenAI's function names: ^[a-zA-Z0-9_-]{1,64}$ (also valid NATS KV keys).
MAX_NAME = 64


class ToolSpec(msgspec.Struct, kw_only=True):
    """A tool as the catalog (KV `vagent_tools`) stores it. Unknown fields are ignored on
    decode, so a newer tools actor may add fields without breaking an older dialogue."""

    name: str
    description: str
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}})
    source: str = "builtin"  # builtin | webhook | mcp:<server> | device | kb


def openai_tool(spec: ToolSpec) -> dict[str, Any]:
    """The entry for the chat-completions `tools` parameter."""
    return {"type": "function", "function": {
        "name": spec.name, "description": spec.description, "parameters": spec.parameters,
    }}


class ToolError(Exception):
    """A failure the LLM should read as it is (bad input, a remote error): no traceback."""


class Tool(abc.ABC):
    spec: ToolSpec
    timeout: float | None = None  # seconds; None: the configured default

    @abc.abstractmethod
    async def call(self, arguments: dict[str, Any]) -> str:
        """The result text; raise ToolError with a message for the LLM when it fails."""

    async def close(self) -> None:  # noqa: B027 - optional: most tools hold nothing
        """Release what the tool holds."""


def tool_name(name: str) -> str:
    """`name` made acceptable to OpenAI's function names and NATS KV keys."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:MAX_NAME] or "tool"
