"""Tool calls that small models write as text.

Small models (Qwen2.5-0.5B under llama.cpp, for one) often answer a tool-using question
with the call's JSON in `content` instead of in `tool_calls`:

    {"name": "get_time", "arguments": {"tz": "Asia/Shanghai"}}

sometimes in a ```json fence or Qwen's <tool_call>…</tool_call> tags, sometimes several
calls in a row or in a list. `parse_bare_tool_calls` recovers such calls, and only when the
whole content is calls to known tools: an answer that merely contains JSON or braces stays
an answer (reading a wrongly parsed call aloud is bad, running a wrong call is worse).
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"\A```[\w-]*[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.S)
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
# Keys a call object may have besides its name; any other key means it is data, not a call.
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id", "function"})
_decoder = json.JSONDecoder()


def parse_bare_tool_calls(content: str, known_tools: set[str]) -> list[tuple[str, str]] | None:
    """The `(name, arguments_json)` calls that make up `content`, or None if `content` is
    not entirely tool-call JSON naming tools in `known_tools`.

    Accepted: one or more `{"name": …, "arguments": {…}}` objects (`arguments` may be a
    JSON string, or `parameters`; an OpenAI-shaped `{"function": {…}}` too), a JSON list of
    them, each optionally wrapped in a ```json fence or <tool_call> tags. `arguments_json`
    is the model's JSON string when it wrote one, else the object serialized.
    """
    text = _unfence(content.strip())
    segments = _tagged(text) if text.startswith(_OPEN) else [text]
    if segments is None:
        return None
    calls: list[tuple[str, str]] = []
    for segment in segments:
        values = _json_values(_unfence(segment.strip()))
        if values is None:
            return None
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                parsed = _call(item, known_tools)
                if parsed is None:
                    return None
                calls.append(parsed)
    return calls or None


def _unfence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def _tagged(text: str) -> list[str] | None:
    """The insides of <tool_call> tags, when nothing but white space is outside them.
    The last closing tag may be missing: small models stop right after the JSON."""
    segments: list[str] = []
    pos = 0
    while pos < len(text):
        if not text.startswith(_OPEN, pos):
            return None
        start = pos + len(_OPEN)
        end = text.find(_CLOSE, start)
        if end < 0:
            segments.append(text[start:])
            break
        segments.append(text[start:end])
        pos = end + len(_CLOSE)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return segments


def _json_values(text: str) -> list[Any] | None:
    """Every JSON value in `text`, one after another (white space or commas between);
    None if anything else is there."""
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and (text[pos].isspace() or (values and text[pos] == ",")):
            pos += 1
        if pos >= len(text):
            return values or None
        if text[pos] not in "{[":
            return None
        try:
            value, pos = _decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _call(item: Any, known_tools: set[str]) -> tuple[str, str] | None:
    if not isinstance(item, dict) or not set(item) <= _CALL_KEYS:
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
        if not set(item) <= _CALL_KEYS:
            return None
    name = item.get("name")
    if not isinstance(name, str) or name not in known_tools:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return None
        return (name, arguments.strip() or "{}") if isinstance(decoded, dict) else None
    if isinstance(arguments, dict):
        return name, json.dumps(arguments, ensure_ascii=False)
    return None
