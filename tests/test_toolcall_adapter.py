"""Bare tool calls in `content`: recovered only when the whole content is calls to known tools;
taken out of a streamed answer as they arrive; calls to tools that do not exist repaired."""

from __future__ import annotations

import random

import pytest

from actors.dialogue.toolcall_adapter import ToolTextGuard, bare_tool_calls, parse_bare_tool_calls, repair

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
    ("the last brace missing", '{"name": "calculator", "arguments": {"expression": "(17 * 23)"}',
     [("calculator", '{"expression": "(17 * 23)"}')]),
    ("the closing fence missing", '```json\n{"name": "get_time", "arguments": {}}', [("get_time", "{}")]),
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
    ("cut inside a string", '{"name": "get_time", "arguments": {"timezone": "Eu'),
    ("cut after a comma", '{"name": "get_time",'),
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


def test_calls_to_any_tool_are_read_but_only_known_ones_recovered() -> None:
    text = '{"name": "square_root", "arguments": {"number": 16}}'
    assert bare_tool_calls(text) == [("square_root", '{"number": 16}')]
    assert parse_bare_tool_calls(text, TOOLS) is None
    assert bare_tool_calls("```json {\"name\": \"Ada\"} ```") == [("Ada", "{}")]
    assert bare_tool_calls("{'name': 'get_time', 'arguments': {}}") == [("get_time", "{}")]


# --- the stream guard --------------------------------------------------------------------

GUARDED: list[tuple[str, str, str, list[tuple[str, str]] | None]] = [
    # (case, content, shown, calls)
    ("prose", "It is ten thirty.", "It is ten thirty.", None),
    ("a bare call", '{"name": "get_time", "arguments": {}}', "", [("get_time", "{}")]),
    ("an unknown tool", '\n {"name": "square_root", "arguments": {"number": 16}}', "",
     [("square_root", '{"number": 16}')]),
    ("a fence on one line", '```json {"name": "Ada"} ```', "", [("Ada", "{}")]),
    ("a fence", '```json\n{"name": "calculate", "arguments": {"expression": "2+2"}}\n```', "",
     [("calculate", '{"expression": "2+2"}')]),
    ("tags", '<tool_call>\n{"name": "get_time"}\n</tool_call>\n<tool_call>{"name": "calculator", '
     '"arguments": {"expr": "3*4"}}</tool_call>', "",
     [("get_time", "{}"), ("calculator", '{"expr": "3*4"}')]),
    ("objects with a comma", '{"name": "get_time"}, {"name": "get_time", "arguments": {"tz": "UTC"}}',
     "", [("get_time", "{}"), ("get_time", '{"tz": "UTC"}')]),
    ("a list", '[{"name": "get_time"}, {"name": "calculator", "arguments": {"expr": "2"}}]', "",
     [("get_time", "{}"), ("calculator", '{"expr": "2"}')]),
    ("python quotes", "{'name': 'get_time', 'arguments': {}}", "", [("get_time", "{}")]),
    ("cut off", '{"name": "get_time", "arguments": {"timezone": "Eu', "", None),
    ("prose before", 'Sure: {"name": "get_time", "arguments": {}}', "Sure: ", None),
    ("prose after", '{"name": "get_time"} I will check.', " I will check.", None),
    ("a placeholder", "Use {name} as a placeholder.", "Use {name} as a placeholder.", None),
    # JSON that is data is said in words: nobody should hear braces and quotes read out.
    ("data", '{"answer": 42}', "42", None),
    ("data with a name", '{"name": "John", "age": 30}', "John, 30", None),
    ("a result as data", 'So {"result": "17 * 23 = 391"}.', "So 17 * 23 = 391.", None),
    ("made-up JSON", '{"17 * 23 = 391', "17 * 23 = 391", None),
    ("a python literal", "{'17 * 23': 391}", "391", None),
    ("a list of numbers", "[1, 2, 3] are numbers.", "[1, 2, 3] are numbers.", None),
    ("inline code", "`ls` lists files.", "`ls` lists files.", None),
    ("a code block", "Code:\n```python\nprint(1)\n```\nDone.", "Code:\n```python\nprint(1)\n```\nDone.",
     None),
    ("html", "<b>bold</b> a < b", "<b>bold</b> a < b", None),
    ("a brace missing", '{"name": "calculator", "arguments": {"expression": "17 * 23"}', "",
     [("calculator", '{"expression": "17 * 23"}')]),
    ("the tool list echoed", '<tools> {"type": "function", "function": {"name": "get_time", "desc', "", None),
    ("a definition", 'See {"type": "function", "function": {"name": "f", "parameters": {}}}', "See ", None),
    # Template-escaped braces, as Qwen2.5-Coder-1.5B wrote for a Mandarin question.
    ("doubled braces", '{{"name": "get_time", "arguments": {"timezone": "Beijing"}}}', "", None),
]


# Contents released rewritten (data said in words), so not character for character.
SAID_IN_WORDS = {c[1] for c in GUARDED if c[0] in (
    "data", "data with a name", "a result as data", "made-up JSON", "a python literal")}


def guarded(parts: list[str]) -> tuple[str, ToolTextGuard]:
    guard = ToolTextGuard()
    shown = "".join(guard.feed(part) for part in parts) + guard.finish()
    return shown, guard


@pytest.mark.parametrize(("content", "shown", "calls"), [c[1:] for c in GUARDED], ids=[c[0] for c in GUARDED])
def test_guard_takes_call_text_out_however_the_stream_is_cut(
        content: str, shown: str, calls: list[tuple[str, str]] | None) -> None:
    cuts = [[content], list(content)]
    rng = random.Random(content)
    for _ in range(30):
        points = sorted(rng.sample(range(1, len(content)), min(len(content) - 1, rng.randint(1, 8))))
        cuts.append([content[a:b] for a, b in zip([0, *points], [*points, len(content)], strict=True)])
    for parts in cuts:
        out, guard = guarded(parts)
        assert out == shown, parts
        assert guard.calls() == calls, parts
        if content not in SAID_IN_WORDS:  # nothing lost
            assert len(out) + sum(map(len, guard.withheld)) == len(content)


def test_guard_holds_back_only_what_may_begin_a_call() -> None:
    guard = ToolTextGuard()
    assert guard.feed("Hello there.") == "Hello there."  # prose: at once
    assert guard.feed(" It is") == " It is"
    assert guard.feed(" {") == " "  # may be JSON: wait for the next character
    assert guard.feed('"name": "get_time"') == ""  # JSON: wait for its end
    assert guard.feed("}") == ""  # a call: never shown
    assert guard.feed(" or `") == " or "
    assert guard.feed("x`.") == "`x`."  # inline code, not a fence
    assert guard.finish() == ""
    assert guard.withheld == ['{"name": "get_time"}'] and guard.calls() is None  # not only calls
    opening = ToolTextGuard()
    assert opening.feed("\n") == ""  # white space waits for what follows it
    assert opening.feed("Hi") == "\nHi"


@pytest.mark.parametrize(("name", "arguments", "expected"), [
    ("square_root", '{"number": 16}', ("calculator", '{"expression": "sqrt(16)"}')),
    ("sqrt", '{"x": "2.5"}', ("calculator", '{"expression": "sqrt(2.5)"}')),
    ("calculate", '{"expression": "17*23"}', ("calculator", '{"expression": "17*23"}')),
    ("math", '{"input": "2 + 2"}', ("calculator", '{"expression": "2 + 2"}')),
    ("add", '{"a": 2, "b": 3}', ("calculator", '{"expression": "2 + 3"}')),
    ("sum", '{"numbers": [1, 2, 3]}', ("calculator", '{"expression": "1 + 2 + 3"}')),
    ("power", '{"base": 2, "exponent": 10}', ("calculator", '{"expression": "2 ** 10"}')),
    ("get_current_time", "{}", ("get_time", "{}")),
    ("current_time", '{"location": "Asia/Tokyo"}', ("get_time", '{"timezone": "Asia/Tokyo"}')),
    ("functions.get_time", "{}", ("get_time", "{}")),
    ("Calculator", '{"expression": "1"}', ("calculator", '{"expression": "1"}')),
    ("Ada", "{}", None),
    ("lookup_weather", '{"city": "Oslo"}', None),
    ("square_root", '{"number": "sixteen"}', None),  # the arguments do not fit
    ("subtract", '{"a": 1, "b": 2, "c": 3}', None),  # which order? not a guess to make
    ("calculate", "{}", None),
    ("calculate", "[1]", None),
])
def test_repair(name: str, arguments: str, expected: tuple[str, str] | None) -> None:
    assert repair(name, arguments, TOOLS) == expected


def test_repair_only_onto_offered_tools() -> None:
    assert repair("square_root", '{"number": 16}', {"get_time"}) is None
    assert repair("get_current_time", "{}", {"calculator"}) is None
