"""Bare tool calls in `content`: recovered only when the whole content is calls to known tools."""

from __future__ import annotations

import pytest

from actors.toolcall_adapter import parse_bare_tool_calls

TOOLS = {"get_time", "calculator"}

CALLS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("plain object", '{"name": "get_time", "arguments": {"tz": "Asia/Shanghai"}}',
     [("get_time", '{"tz": "Asia/Shanghai"}')]),
    ("surrounding white space", '\n  {"name": "get_time", "arguments": {}}  \n', [("get_time", "{}")]),
    ("arguments as a string", '{"name": "calculator", "arguments": "{\\"expr\\": \\"2+2\\"}"}',
     [("calculator", '{"expr": "2+2"}')]),
    ("empty string arguments", '{"name": "get_time", "arguments": ""}', [("get_time", "{}")]),
    ("no arguments", '{"name": "get_time"}', [("get_time", "{}")]),
    ("parameters", '{"name": "calculator", "parameters": {"expr": "1+1"}}',
     [("calculator", '{"expr": "1+1"}')]),
    ("openai shape", '{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}',
     [("get_time", "{}")]),
    ("non-ascii kept", '{"name": "get_time", "arguments": {"city": "上海"}}',
     [("get_time", '{"city": "上海"}')]),
    ("json fence", '```json\n{"name": "get_time", "arguments": {}}\n```', [("get_time", "{}")]),
    ("bare fence", '```\n{"name": "get_time", "arguments": {}}```', [("get_time", "{}")]),
    ("qwen tags", '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>',
     [("get_time", '{"tz": "UTC"}')]),
    ("several tags",
     '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n'
     '<tool_call>\n{"name": "calculator", "arguments": {"expr": "3*4"}}\n</tool_call>',
     [("get_time", "{}"), ("calculator", '{"expr": "3*4"}')]),
    ("unclosed last tag", '<tool_call>\n{"name": "get_time", "arguments": {}}', [("get_time", "{}")]),
    ("fenced tag", '```\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n```',
     [("get_time", "{}")]),
    ("objects in a row",
     '{"name": "get_time", "arguments": {}}\n{"name": "calculator", "arguments": {"expr": "1"}}',
     [("get_time", "{}"), ("calculator", '{"expr": "1"}')]),
    ("objects with a comma",
     '{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {"tz": "UTC"}}',
     [("get_time", "{}"), ("get_time", '{"tz": "UTC"}')]),
    ("a list", '[{"name": "get_time", "arguments": {}}, {"name": "calculator", "arguments": {"expr": "2"}}]',
     [("get_time", "{}"), ("calculator", '{"expr": "2"}')]),
]

NOT_CALLS: list[tuple[str, str]] = [
    ("ordinary text", "It is ten thirty."),
    ("empty", ""),
    ("white space", "  \n"),
    ("text with braces", "Use {name} as a placeholder, like {\"name\": \"get_time\"}."),
    ("text before json", 'Sure: {"name": "get_time", "arguments": {}}'),
    ("text after json", '{"name": "get_time", "arguments": {}} I will check the time.'),
    ("text between tags",
     '<tool_call>{"name": "get_time"}</tool_call> and then <tool_call>{"name": "get_time"}</tool_call>'),
    ("unknown tool", '{"name": "delete_everything", "arguments": {}}'),
    ("one unknown among known", '[{"name": "get_time"}, {"name": "rm_rf"}]'),
    ("data, not a call", '{"name": "get_time", "age": 3}'),
    ("no name", '{"arguments": {"tz": "UTC"}}'),
    ("name not a string", '{"name": 7, "arguments": {}}'),
    ("arguments not an object", '{"name": "get_time", "arguments": [1, 2]}'),
    ("arguments string not json", '{"name": "get_time", "arguments": "tz=UTC"}'),
    ("arguments string a list", '{"name": "get_time", "arguments": "[1]"}'),
    ("broken json", '{"name": "get_time", "arguments": {'),
    ("empty list", "[]"),
    ("list of numbers", "[1, 2, 3]"),
    ("json string", '"get_time"'),
    ("fenced code", "```python\nprint({'name': 'get_time'})\n```"),
    ("empty tags", "<tool_call></tool_call>"),
]


@pytest.mark.parametrize(("content", "expected"), [case[1:] for case in CALLS], ids=[c[0] for c in CALLS])
def test_calls(content: str, expected: list[tuple[str, str]]) -> None:
    assert parse_bare_tool_calls(content, TOOLS) == expected


@pytest.mark.parametrize("content", [case[1] for case in NOT_CALLS], ids=[c[0] for c in NOT_CALLS])
def test_not_calls(content: str) -> None:
    assert parse_bare_tool_calls(content, TOOLS) is None


def test_no_known_tools_means_no_calls() -> None:
    assert parse_bare_tool_calls('{"name": "get_time", "arguments": {}}', set()) is None
