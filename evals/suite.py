"""An evaluation suite: its YAML read into typed structs, every mistake named by its line.

The YAML is composed into nodes (which keep where they start) and checked here, not loaded
into dicts first: a suite's author reads `suite.yaml:12: turn 3: unknown expectation
'contain' (did you mean 'contains'?)` rather than a schema error about a nameless path.

    name: smoke
    provider: echo                 # default | echo | local | an OpenAI-compatible base URL
    assistant: {persona: "You are terse.", language: en, tools: [get_time]}
    conversations:
      - name: greeting
        turns:
          - say: hello there
            contains: hello
            latency: {first_delta_ms: 2000}
          - audio: what_time.wav   # relative to the suite file
            tool: get_time

docs/evaluations.md is the reference.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml  # type: ignore[import-untyped]  # PyYAML ships no types

from audio.wavfile import AudioFileError, read_wav

STAGES: tuple[str, ...] = ("transcript_ms", "first_delta_ms", "first_sentence_ms", "first_audio_ms",
                           "answer_ms")
PROVIDERS = ("default", "echo", "local")
LANGUAGES = ("en", "zh")
MAX_AUDIO_SECONDS = 30.0  # the VAD cuts an utterance at 30 s by default: one file, one turn
# Without a judge LLM, `similar_to` is this share of matching characters (difflib's ratio).
SIMILARITY = 0.6


class SuiteError(Exception):
    """A suite that cannot run; the message starts with `file:line:`."""


class Contains(msgspec.Struct, tag="contains"):
    text: str
    line: int


class NotContains(msgspec.Struct, tag="not_contains"):
    text: str
    line: int


class Regex(msgspec.Struct, tag="regex"):
    pattern: str
    line: int


class Tool(msgspec.Struct, tag="tool"):
    name: str
    line: int
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)  # a subset, equal values
    arguments_match: dict[str, str] = msgspec.field(default_factory=dict)  # argument → regex


class Language(msgspec.Struct, tag="language"):
    language: str
    line: int


class Latency(msgspec.Struct, tag="latency"):
    stage: str
    budget_ms: float
    line: int


class Judge(msgspec.Struct, tag="judge"):
    prompt: str
    line: int


class SimilarTo(msgspec.Struct, tag="similar_to"):
    text: str
    line: int
    threshold: float | None = None  # set: text similarity even with a judge LLM


Expectation = Contains | NotContains | Regex | Tool | Language | Latency | Judge | SimilarTo


class Turn(msgspec.Struct):
    line: int
    say: str | None = None
    audio: Path | None = None
    pcm: bytes = b""  # the audio, 16 kHz mono PCM16
    expect: list[Expectation] = msgspec.field(default_factory=list)

    @property
    def input(self) -> str:
        return self.say if self.say is not None else f"[{self.audio.name if self.audio else ''}]"


class Conversation(msgspec.Struct):
    name: str
    line: int
    turns: list[Turn]


class Assistant(msgspec.Struct):
    persona: str = ""
    language: str = "en"
    tools: list[str] = msgspec.field(default_factory=list)
    name: str = "Eval assistant"


class Provider(msgspec.Struct):
    kind: str = "default"  # default | echo | local | url
    url: str | None = None
    model: str | None = None


class Suite(msgspec.Struct):
    name: str
    path: Path
    conversations: list[Conversation]
    provider: Provider = msgspec.field(default_factory=Provider)
    assistant: Assistant | None = None
    tts: bool | None = None  # None: on when a turn has a `first_audio_ms` budget

    @property
    def voice(self) -> bool:
        return any(t.audio is not None for c in self.conversations for t in c.turns)

    @property
    def speaks(self) -> bool:
        if self.tts is not None:
            return self.tts
        return any(isinstance(e, Latency) and e.stage == "first_audio_ms"
                   for c in self.conversations for t in c.turns for e in t.expect)


TOP_KEYS = ("name", "provider", "model", "assistant", "tts", "conversations")
ASSISTANT_KEYS = ("persona", "language", "tools", "name")
CONVERSATION_KEYS = ("name", "turns")
INPUT_KEYS = ("say", "audio")
EXPECTATIONS = ("contains", "not_contains", "regex", "tool", "language", "latency", "judge",
                "similar_to")
TOOL_KEYS = ("name", "arguments", "arguments_match")
SIMILAR_KEYS = ("text", "threshold")


class _Reader:
    """Node checks that name the file, the line and where in the suite a value is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._scalars = yaml.constructor.SafeConstructor()

    def fail(self, node: yaml.Node, where: str, message: str) -> SuiteError:
        return SuiteError(f"{self.path}:{node.start_mark.line + 1}: {where}{': ' if where else ''}{message}")

    def mapping(self, node: yaml.Node, where: str, known: tuple[str, ...], what: str = "key"
                ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key → (key node, value node); unknown keys refused with the nearest known one."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, f"expected a mapping of {', '.join(known)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, where, str, "a key")
            if key not in known:
                raise self.fail(key_node, where, f"unknown {what} {key!r}{_suggest(key, known)}")
            if key in out:
                raise self.fail(key_node, where, f"{key!r} given twice")
            out[key] = (key_node, value_node)
        return out

    def scalar(self, node: yaml.Node, where: str, kind: type | tuple[type, ...], what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, where, f"{what} must be a single value")
        value = self._scalars.construct_object(node)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(node, where, f"{what} must be {_kind_name(kinds)}, not {value!r}")
        return value

    def strings(self, node: yaml.Node, where: str, what: str) -> list[tuple[str, yaml.Node]]:
        """One string, or a list of them: each with its node (its line)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.fail(node, where, f"{what}: an empty list")
            return [(self.scalar(n, where, str, what), n) for n in node.value]
        return [(self.scalar(node, where, str, what), node)]

    def plain(self, node: yaml.Node) -> Any:
        return self._scalars.construct_object(node, deep=True)


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}
    shown = [k for k in kinds if not (k is int and float in kinds)]  # a number includes whole ones
    return " or ".join(names.get(k, k.__name__) for k in shown)


def _suggest(word: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (one of: {', '.join(known)})"


def load_suite(path: Path) -> Suite:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read the suite: {exc.strerror or exc}") from None
    return parse_suite(text, path)


def parse_suite(text: str, path: Path) -> Suite:
    """The suite in `text` (read from `path`, against which audio files are found)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}:" if mark else ""
        raise SuiteError(f"{path}:{line} not YAML: {exc.problem or exc}") from None
    if root is None:
        raise SuiteError(f"{path}:1: the suite is empty")
    r = _Reader(path)
    top = r.mapping(root, "", TOP_KEYS)
    if "conversations" not in top:
        raise r.fail(root, "", "no 'conversations'")
    name = r.scalar(top["name"][1], "name", str, "name") if "name" in top else path.stem
    provider = _provider(r, top)
    assistant = _assistant(r, top["assistant"][1]) if "assistant" in top else None
    tts = r.scalar(top["tts"][1], "tts", bool, "tts") if "tts" in top else None
    conversations_node = top["conversations"][1]
    if not isinstance(conversations_node, yaml.SequenceNode) or not conversations_node.value:
        raise r.fail(conversations_node, "conversations", "expected a list of conversations")
    conversations = [_conversation(r, node, i) for i, node in enumerate(conversations_node.value, start=1)]
    names = [c.name for c in conversations]
    for conversation in conversations:
        if names.count(conversation.name) > 1:
            raise SuiteError(f"{path}:{conversation.line}: conversation {conversation.name!r}: "
                             "the name is used twice")
    return Suite(name=name, path=path, conversations=conversations, provider=provider,
                 assistant=assistant, tts=tts)


def _provider(r: _Reader, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> Provider:
    model = r.scalar(top["model"][1], "model", str, "model") if "model" in top else None
    if "provider" not in top:
        return Provider(model=model)
    node = top["provider"][1]
    value = r.scalar(node, "provider", str, "provider")
    if value.startswith(("http://", "https://")):
        return Provider(kind="url", url=value, model=model)
    if value not in PROVIDERS:
        raise r.fail(node, "provider", f"unknown provider {value!r}{_suggest(value, PROVIDERS)}; "
                                       "or an OpenAI-compatible base URL (http://…)")
    return Provider(kind=value, model=model)


def _assistant(r: _Reader, node: yaml.Node) -> Assistant:
    fields = r.mapping(node, "assistant", ASSISTANT_KEYS, "assistant setting")
    out = Assistant()
    if "persona" in fields:
        out.persona = r.scalar(fields["persona"][1], "assistant", str, "persona")
    if "name" in fields:
        out.name = r.scalar(fields["name"][1], "assistant", str, "name")
    if "language" in fields:
        languages = ("en", "zh", "auto")
        out.language = r.scalar(fields["language"][1], "assistant", str, "language")
        if out.language not in languages:
            raise r.fail(fields["language"][1], "assistant",
                         f"unknown language {out.language!r}{_suggest(out.language, languages)}")
    if "tools" in fields:
        tools_node = fields["tools"][1]
        if not isinstance(tools_node, yaml.SequenceNode):
            raise r.fail(tools_node, "assistant", "tools: expected a list of tool names")
        out.tools = [r.scalar(n, "assistant", str, "a tool name") for n in tools_node.value]
    return out


def _conversation(r: _Reader, node: yaml.Node, n: int) -> Conversation:
    fields = r.mapping(node, f"conversation {n}", CONVERSATION_KEYS)
    name = (r.scalar(fields["name"][1], f"conversation {n}", str, "name") if "name" in fields
            else f"conversation {n}")
    where = f"conversation {name!r}"
    if "turns" not in fields:
        raise r.fail(node, where, "no 'turns'")
    turns_node = fields["turns"][1]
    if not isinstance(turns_node, yaml.SequenceNode) or not turns_node.value:
        raise r.fail(turns_node, where, "turns: expected a list of turns")
    turns = [_turn(r, t, i) for i, t in enumerate(turns_node.value, start=1)]
    return Conversation(name=name, line=node.start_mark.line + 1, turns=turns)


def _turn(r: _Reader, node: yaml.Node, n: int) -> Turn:
    where = f"turn {n}"
    fields = r.mapping(node, where, INPUT_KEYS + EXPECTATIONS, "expectation")
    inputs = [k for k in INPUT_KEYS if k in fields]
    if len(inputs) != 1:
        raise r.fail(node, where, "say: TEXT or audio: FILE, one of the two"
                     + (" (both are given)" if inputs else ""))
    turn = Turn(line=node.start_mark.line + 1)
    if "say" in fields:
        turn.say = r.scalar(fields["say"][1], where, str, "say")
        if not turn.say.strip():
            raise r.fail(fields["say"][1], where, "say: nothing to say")
    else:
        audio_node = fields["audio"][1]
        audio = r.path.parent / r.scalar(audio_node, where, str, "audio")
        try:
            turn.pcm = read_wav(audio, MAX_AUDIO_SECONDS)
        except AudioFileError as exc:
            raise r.fail(audio_node, where, f"audio: {exc}") from None
        turn.audio = audio
    for key in EXPECTATIONS:
        if key in fields:
            turn.expect += _EXPECTATION_READERS[key](r, fields[key][1], where)
    return turn


def _texts(kind: Callable[[str, int], Expectation], check: Callable[[str], str | None] | None = None
           ) -> Callable[[_Reader, yaml.Node, str], list[Expectation]]:
    def read(r: _Reader, node: yaml.Node, where: str) -> list[Expectation]:
        out = []
        for value, value_node in r.strings(node, where, "an expected text"):
            problem = check(value) if check else None
            if problem:
                raise r.fail(value_node, where, problem)
            out.append(kind(value, value_node.start_mark.line + 1))
        return out

    return read


def _bad_regex(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"regex {pattern!r} does not compile: {exc}"
    return None


def _tools(r: _Reader, node: yaml.Node, where: str) -> list[Expectation]:
    nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
    out: list[Expectation] = []
    for one in nodes:
        line = one.start_mark.line + 1
        if isinstance(one, yaml.ScalarNode):
            out.append(Tool(name=r.scalar(one, where, str, "tool"), line=line))
            continue
        fields = r.mapping(one, where, TOOL_KEYS, "tool key")
        if "name" not in fields:
            raise r.fail(one, where, "tool: no 'name'")
        tool = Tool(name=r.scalar(fields["name"][1], where, str, "tool name"), line=line)
        if "arguments" in fields:
            arguments = fields["arguments"][1]
            if not isinstance(arguments, yaml.MappingNode):
                raise r.fail(arguments, where, "tool arguments: expected a mapping of argument: value")
            tool.arguments = r.plain(arguments)
        if "arguments_match" in fields:
            matches = fields["arguments_match"][1]
            if not isinstance(matches, yaml.MappingNode):
                raise r.fail(matches, where, "tool arguments_match: expected a mapping of argument: regex")
            for key_node, value_node in matches.value:
                key = r.scalar(key_node, where, str, "an argument name")
                pattern = r.scalar(value_node, where, str, "a regex")
                if problem := _bad_regex(pattern):
                    raise r.fail(value_node, where, problem)
                tool.arguments_match[key] = pattern
        out.append(tool)
    return out


def _language(r: _Reader, node: yaml.Node, where: str) -> list[Expectation]:
    value = r.scalar(node, where, str, "language")
    if value not in LANGUAGES:
        raise r.fail(node, where, f"unknown language {value!r}{_suggest(value, LANGUAGES)}")
    return [Language(language=value, line=node.start_mark.line + 1)]


def _latency(r: _Reader, node: yaml.Node, where: str) -> list[Expectation]:
    fields = r.mapping(node, where, STAGES, "latency stage")
    out: list[Expectation] = []
    for stage, (key_node, value_node) in fields.items():
        budget = r.scalar(value_node, where, (int, float), f"latency {stage}")
        if budget <= 0:
            raise r.fail(value_node, where, f"latency {stage}: a budget in ms must be more than 0")
        out.append(Latency(stage=stage, budget_ms=float(budget), line=key_node.start_mark.line + 1))
    return out


def _similar(r: _Reader, node: yaml.Node, where: str) -> list[Expectation]:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return [SimilarTo(text=r.scalar(node, where, str, "similar_to"), line=line)]
    fields = r.mapping(node, where, SIMILAR_KEYS, "similar_to key")
    if "text" not in fields:
        raise r.fail(node, where, "similar_to: no 'text'")
    out = SimilarTo(text=r.scalar(fields["text"][1], where, str, "similar_to text"), line=line)
    if "threshold" in fields:
        threshold_node = fields["threshold"][1]
        out.threshold = r.scalar(threshold_node, where, (int, float), "similar_to threshold")
        if not 0 < out.threshold <= 1:
            raise r.fail(threshold_node, where, "similar_to threshold: between 0 and 1")
    return [out]


_EXPECTATION_READERS: dict[str, Callable[[_Reader, yaml.Node, str], list[Expectation]]] = {
    "contains": _texts(lambda v, line: Contains(v, line)),
    "not_contains": _texts(lambda v, line: NotContains(v, line)),
    "regex": _texts(lambda v, line: Regex(v, line), _bad_regex),
    "tool": _tools,
    "language": _language,
    "latency": _latency,
    "judge": _texts(lambda v, line: Judge(v, line)),
    "similar_to": _similar,
}
assert set(_EXPECTATION_READERS) == set(EXPECTATIONS)
