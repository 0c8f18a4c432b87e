"""The tools actor (`tool.call` → `tool.result`) and its tool sources.

For the dialogue: `from actors.tools.catalog import catalog` (the published tools) and
`from actors.tools import openai_tool`. Importing these does not load the MCP SDK or an
HTTP client; only the actor imports the sources.
"""

from actors.tools.spec import Tool, ToolError, ToolSpec, openai_tool

__all__ = ["Tool", "ToolError", "ToolSpec", "openai_tool"]
