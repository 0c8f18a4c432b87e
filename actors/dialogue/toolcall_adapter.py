"""Tool calls that small models write as text.

Small models (Qwen2.5-0.5B under llama.cpp, for one) often answer a tool-using question
with the call's JSON in `content` instead of in `tool_calls`:

    {"name": "get_time", "arguments": {"tz": "Asia/Shanghai"}}

sometimes in a ```json fence or Qwen's <tool_call>…</tool_call> tags, sometimes several
calls in a row or in a list, sometimes naming a tool that does not exist
(`{"name": "square_root", …}`). Such text is never an answer: nobody should see or hear it.

- `ToolTextGuard` takes it out of a streamed answer as the tokens arrive: what may begin a
  call (a `{` or `[` opening the answer, a `{"` anywhere, a ``` fence, a `<tool_call>` tag)
  is held back until it is known to be a call or not; prose streams on untouched.
- `bare_tool_calls` reads the calls in such text, whatever tools they name;
  `parse_bare_tool_calls` only when every one names a known tool. Calls are recovered only
  when the whole content is calls: an answer that merely contains JSON or braces stays an
  answer (reading a wrongly parsed call aloud is bad, running a wrong call is worse).
- `repair` maps a call to a tool that does not exist onto the tool that does what it asks
  (`calculate`, `square_root` → `calculator`; `get_current_time` → `get_time`), when the
  arguments fit.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Collection
from typing import Any

from actors.tools.calc import FUNCTIONS

# The closing fence may be missing: small models stop right after the JSON.
_FENCE = re.compile(r"\A```[\w-]*[ \t]*\n?(.*?)\n?[ \t]*(?:```)?\Z", re.S)
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
# Tags of chat templates' tool plumbing, which small models echo (Qwen's <tools> list of
# tool definitions, for one): never prose, whatever is inside.
_TAGS = {tag: f"</{tag[1:]}" for tag in (_OPEN, "<tools>", "<tool_response>", "<function_call>")}
# Keys that make a JSON object tool plumbing (a tool's definition, a call) rather than data.
_TOOLING_KEYS = frozenset({"function", "arguments", "parameters", "tool_calls"})
_MAX_CLOSERS = 3  # brackets a model may have left unclosed at the end of a call
_TICKS = "```"
# Keys a call object may have besides its name; any other key means it is data, not a call.
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id", "function"})
# How a call begins, for text that cannot be read (cut off at max_tokens, Python quotes).
_CALL_START = re.compile(
    r"""\A\s*(?:```[\w-]*\s*)?(?:<tool_call>\s*)?\[?\s*(?:\{\s*)+["']?(?:name|function|tool|tool_name|type)["']?\s*:""")
_MAX_LITERAL = 4000  # Python literals are parsed only this long: ast costs memory per node
_decoder = json.JSONDecoder()

Call = tuple[str, str]  # (tool name, arguments as a JSON object's text)


def parse_bare_tool_calls(content: str, known_tools: Collection[str]) -> list[Call] | None:
    """The `(name, arguments_json)` calls that make up `content`, or None if `content` is
    not entirely tool-call JSON naming tools in `known_tools`."""
    calls = bare_tool_calls(content)
    if calls is None or any(name not in known_tools for name, _ in calls):
        return None
    return calls


def bare_tool_calls(content: str) -> list[Call] | None:
    """The calls that make up `content`, whatever tools they name; None if `content` is
    not entirely tool-call JSON.

    Accepted: one or more `{"name": …, "arguments": {…}}` objects (`arguments` may be a
    JSON string, or `parameters`; an OpenAI-shaped `{"function": {…}}` too), a JSON list of
    them, each optionally wrapped in a ```json fence or <tool_call> tags; Python's quoting
    (`{'name': …}`) too. `arguments_json` is the model's JSON string when it wrote one, else
    the object serialized.
    """
    text = _unfence(content.strip())
    segments = _tagged(text) if text.startswith(_OPEN) else [text]
    if segments is None:
        return None
    calls: list[Call] = []
    for segment in segments:
        values = _values(_unfence(segment.strip()))
        if values is None:
            return None
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                parsed = _call(item)
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


def _values(text: str) -> list[Any] | None:
    """Every JSON value in `text`, one after another (white space or commas between), or
    one Python literal; None if anything else is there. A model that stopped before its
    last closing brackets gets them added (`{"name": "calculator", "arguments": {…}`)."""
    values = _json_values(text)
    if values is None and text[:1] in ("{", "[") and len(text) <= _MAX_LITERAL:
        try:
            values = [ast.literal_eval(text)]
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            values = None
    if values is None and (closers := _missing_closers(text)):
        values = _json_values(text + closers)
    return values


def _missing_closers(text: str) -> str:
    """The brackets that would close `text` when it ends outside a string with a few left
    open; "" otherwise (a value cut inside a string is not guessed at)."""
    stack: list[str] = []
    quote, escaped = False, False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quote = False
        elif char == '"':
            quote = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if not stack or stack.pop() != char:
                return ""
    # Cut right after a comma, a colon or an opening bracket, the rest is not known.
    if quote or not stack or len(stack) > _MAX_CLOSERS or text.rstrip()[-1:] in (",", ":", "{", "["):
        return ""
    return "".join(reversed(stack))


def _json_values(text: str) -> list[Any] | None:
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


def _call(item: Any) -> Call | None:
    if not isinstance(item, dict) or not set(item) <= _CALL_KEYS:
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
        if not set(item) <= _CALL_KEYS:
            return None
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
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


def is_call_text(text: str) -> bool:
    """Whether `text` (a piece of an answer) is a tool call written out, readable or not:
    tagged, call-shaped JSON, or JSON that starts like a call but cannot be read (cut off,
    broken). JSON that reads as something else (data) is not."""
    body = text.lstrip(" \t\r\n,")
    if body.startswith(tuple(_TAGS)) or bare_tool_calls(body) is not None:
        return True
    values = _values(_unfence(body.strip()))
    if values is None:
        return _CALL_START.match(body) is not None
    return any(isinstance(item, dict) and set(item) & _TOOLING_KEYS
               for value in values for item in (value if isinstance(value, list) else [value]))


def as_words(piece: str) -> str:
    """A held piece that is not a call, as it may be shown and spoken: JSON or a Python
    literal becomes its values in words (`{"result": "17 * 23 = 391"}` → `17 * 23 = 391`),
    and text that only looks like one (`{"17 * 23 = 391`, cut off or made up) loses its
    brackets and quotes. Small models answer like that now and then, and a voice must not
    read braces out. Fenced or tagged text is left as it came."""
    body = piece.strip()
    if not body.startswith(("{", "[")):
        return piece
    values = _values(body)
    if values is not None:
        words = ", ".join(_leaves(values))
    else:
        words = _LITERAL_MARKS.sub("", body)
    lead = piece[:len(piece) - len(piece.lstrip())]
    trail = piece[len(piece.rstrip()):]
    return lead + " ".join(words.split()) + trail


# Brackets, double quotes, and single quotes that are not apostrophes inside a word.
_LITERAL_MARKS = re.compile(r"""[{}\[\]"]|(?<!\w)'|'(?!\w)""")


def _leaves(value: Any) -> list[str]:
    """The strings and numbers in a JSON value, in order; keys are left out."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list | tuple | set):
        return [leaf for item in value for leaf in _leaves(item)]
    if value is None or isinstance(value, bool):
        return []
    text = str(value).strip()
    return [text] if text else []


# --- holding call text back from a stream -----------------------------------------------

class ToolTextGuard:
    """Feed an answer's deltas in order; get back what may be shown and spoken now.

    Text that may begin a call is held until its end (the matching brace, the closing fence
    or tag) has arrived; then it is released if it is not a call, else kept in `withheld`.
    Only such a possible start waits: prose is released as it comes, so the first sentence
    is not delayed. Leading white space (and commas between calls) wait with what follows.
    """

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0  # everything before it is released or withheld
        self._segment: int | None = None  # where held text that may be a call starts
        self.spoke = False  # released text that is not white space
        self.withheld: list[str] = []  # the call text taken out, in order

    def feed(self, delta: str) -> str:
        self._text += delta
        return self._scan(final=False)

    def finish(self) -> str:
        """The stream ended: what was still held and is not a call."""
        return self._scan(final=True)

    def calls(self) -> list[Call] | None:
        """The calls, when the answer was nothing but readable call text."""
        if self.spoke or not self.withheld:
            return None
        calls: list[Call] = []
        for piece in self.withheld:  # one by one: two fenced blocks do not read as one
            parsed = bare_tool_calls(piece.lstrip(" \t\r\n,"))
            if parsed is None:
                return None
            calls += parsed
        return calls

    def _scan(self, final: bool) -> str:
        out: list[str] = []
        text, n = self._text, len(self._text)
        while self._pos < n:
            if self._segment is not None:
                end = self._segment_end(final)
                if end is None:
                    break
                piece = text[self._segment:end]
                if is_call_text(piece):
                    self.withheld.append(piece)
                else:
                    piece = as_words(piece)
                    out.append(piece)
                    self.spoke = self.spoke or bool(piece.strip())
                self._pos, self._segment = end, None
                continue
            start, decided = self._next_start(final)
            released = text[self._pos:start]
            # Before any prose, white space (and, between calls, commas) waits for what
            # follows: it goes with a call, or out with prose. After prose it is prose.
            filler = "" if self.spoke else " \t\r\n" + ("," if self.withheld else "")
            if start < n and decided:
                if released.strip(filler):
                    out.append(released)
                    self.spoke = self.spoke or bool(released.strip())
                    self._segment = start
                else:
                    self._segment = self._pos
                self._pos = start
                continue
            if released.strip(filler):
                out.append(released)
                self.spoke = self.spoke or bool(released.strip())
                self._pos = start
            elif final and released:
                if self.withheld:
                    self.withheld[-1] += released  # trailing white space after the calls
                else:
                    out.append(released)
                self._pos = start
            if not final:
                break
            self._pos = n
        return "".join(out)

    def _next_start(self, final: bool) -> tuple[int, bool]:
        """Where the next possible call starts and whether it is one to hold (True), or
        where the text becomes undecided (False: more must arrive), or the end."""
        text, n = self._text, len(self._text)
        opening = not self.spoke
        i = self._pos
        while i < n:
            char = text[i]
            if char == "`":
                rest = text[i:i + 3]
                if rest == _TICKS:
                    return i, True
                if not final and len(rest) < 3 and rest == "`" * len(rest) and i + len(rest) == n:
                    return i, False
            elif char == "<":
                if any(text.startswith(tag, i) for tag in _TAGS):
                    return i, True
                rest = text[i:]
                if not final and len(rest) < len(_OPEN) and any(tag.startswith(rest) for tag in _TAGS):
                    return i, False
            elif char in "{[":
                if opening and not text[self._pos:i].strip() and char == "{":
                    return i, True  # an answer that opens with an object
                following = self._after_space(i + 1)
                if following is None:
                    if not final:
                        return i, False
                elif char == "{" and text[following] in "\"'":
                    return i, True  # {"… anywhere: JSON, not prose
                elif char == "[" and text[following] == "{":
                    second = self._after_space(following + 1)
                    if opening and not text[self._pos:i].strip():
                        return i, True
                    if second is None and not final:
                        return i, False
                    if second is not None and text[second] in "\"'":
                        return i, True
            i += 1
        return n, False

    def _after_space(self, i: int) -> int | None:
        text, n = self._text, len(self._text)
        while i < n and text[i].isspace():
            i += 1
        return i if i < n else None

    def _segment_end(self, final: bool) -> int | None:
        """The end of the held text that starts at `_segment`: after its closing fence, tag
        or bracket; None while that has not arrived (the whole rest once the stream ended)."""
        text, n = self._text, len(self._text)
        assert self._segment is not None
        k = self._after_space(self._segment)
        while k is not None and text[k] == "," and self.withheld:
            k = self._after_space(k + 1)
        end: int | None = None
        if k is None:
            end = None
        elif text.startswith(_TICKS, k):
            close = text.find(_TICKS, k + 3)
            end = close + 3 if close >= 0 else None
        elif tag := next((t for t in _TAGS if text.startswith(t, k)), None):
            close = text.find(_TAGS[tag], k)
            end = close + len(_TAGS[tag]) if close >= 0 else None
        else:
            end = _balanced_end(text, k)
        if end is None and final:
            return n
        return end


def _balanced_end(text: str, start: int) -> int | None:
    """The index after the bracket that closes the one at `start` (strings in either quote
    skipped), or None if it has not arrived."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


# --- calls to tools that do not exist ----------------------------------------------------

_PREFIX = re.compile(r"\A(?:functions?|tools?)[._]")
# What small models call the built-in tools when they do not read the tool list.
_TIME_NAMES = frozenset({
    "time", "now", "clock", "date", "datetime", "current_time", "get_current_time", "get_date",
    "get_datetime", "get_current_date", "get_current_datetime", "get_local_time", "local_time",
    "get_time_now", "what_time", "time_now", "current_date", "current_datetime"})
_CALC_NAMES = frozenset({
    "calc", "calculate", "calculation", "compute", "evaluate", "eval", "math", "arithmetic",
    "calculate_expression", "evaluate_expression", "solve", "calculator_tool", "math_eval"})
_ZONE_KEYS = ("timezone", "time_zone", "tz", "zone", "location", "city", "place")
_EXPRESSION_KEYS = ("expression", "expr", "formula", "equation", "input", "query", "problem",
                    "calculation", "math")
_FUNCTION_NAMES = {
    **{name: name for name in FUNCTIONS}, "square_root": "sqrt", "squareroot": "sqrt",
    "root": "sqrt", "ln": "log", "natural_log": "log", "logarithm": "log", "absolute": "abs",
    "absolute_value": "abs", "sine": "sin", "cosine": "cos", "tangent": "tan",
    "maximum": "max", "minimum": "min"}
_OPERATORS = {
    "add": "+", "sum": "+", "plus": "+", "addition": "+", "subtract": "-", "minus": "-",
    "difference": "-", "subtraction": "-", "multiply": "*", "times": "*", "product": "*",
    "multiplication": "*", "divide": "/", "division": "/", "quotient": "/", "power": "**",
    "pow": "**", "exponent": "**", "modulo": "%", "mod": "%", "remainder": "%"}
_CHAINED = frozenset({"+", "*"})  # the operators that take more than two numbers


def repair(name: str, arguments: str, known_tools: Collection[str]) -> Call | None:
    """A call to `name`, which is not a known tool, as a call to the known tool that does
    what it asks, or None when there is none or its arguments do not fit."""
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return None
    if not isinstance(args, dict):
        return None
    key = _normalized(name)
    for tool in known_tools:  # Calculator, functions.get_time: a slip of the pen
        if _normalized(tool) == key:
            return tool, arguments
    if "get_time" in known_tools and key in _TIME_NAMES:
        zone = next((v for k in _ZONE_KEYS if isinstance(v := args.get(k), str) and v.strip()), None)
        return "get_time", json.dumps({"timezone": zone} if zone else {}, ensure_ascii=False)
    if "calculator" in known_tools:
        expression = _expression(key, args)
        if expression:
            return "calculator", json.dumps({"expression": expression}, ensure_ascii=False)
    return None


def _normalized(name: str) -> str:
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return _PREFIX.sub("", key)


def _expression(key: str, args: dict[str, Any]) -> str | None:
    if key in _CALC_NAMES:
        text = next((args[k] for k in _EXPRESSION_KEYS if k in args), None)
        if text is None and len(args) == 1:
            text = next(iter(args.values()))
        if isinstance(text, int | float) and not isinstance(text, bool):
            text = str(text)
        return text.strip() if isinstance(text, str) and text.strip() else None
    numbers = _numbers(list(args.values()))
    if not numbers:
        return None
    if key in _FUNCTION_NAMES:
        return f"{_FUNCTION_NAMES[key]}({', '.join(numbers)})"
    operator = _OPERATORS.get(key)
    if operator and (len(numbers) == 2 or (operator in _CHAINED and len(numbers) > 2)):
        return f" {operator} ".join(numbers)
    return None


def _numbers(values: list[Any]) -> list[str] | None:
    """The values as numbers' text (lists flattened, numeric strings read), or None if any
    is not a number."""
    out: list[str] = []
    for value in values:
        if isinstance(value, list):
            inner = _numbers(value)
            if inner is None:
                return None
            out += inner
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append(repr(value))
        elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\s*", value):
            out.append(value.strip())
        else:
            return None
    return out
