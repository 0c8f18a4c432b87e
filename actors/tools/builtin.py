"""Built-in tools, and the registry the config's `tools.builtins` names are looked up in.

Adding one: write a factory `def make(ctx: BuiltinContext) -> Tool` (it may be
`async`; a slow model load is fine there) in any module, add `"name": "package.module:make"`
to BUILTINS, and list the name in `vagent.toml`'s `[tools] builtins`. Modules are
imported only when their tool is configured, so heavy dependencies load only
where they are used.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.plugins import Registry
from actors.tools.calc import CalcError, evaluate, format_number
from actors.tools.spec import Tool, ToolError, ToolSpec
from bus.client import Bus
from domain.phrases import phrases
from schemas import ToolCall, TranscriptFinal, UserText
from settings.config import Config, ConfigError

# The call being answered, set by the tools actor around each run: a tool that needs the
# session (knowledge_search reads the session's assistant) finds it here.
current_call: ContextVar[ToolCall | None] = ContextVar("current_call", default=None)


@dataclass(frozen=True)
class BuiltinContext:
    """What a builtin factory may use."""

    config: Config
    bus: Bus | None = None
    data_dir: Path | None = None  # the process's data directory, when it has one


BuiltinFactory = Callable[[BuiltinContext], Tool | Awaitable[Tool]]

BUILTINS: Registry[BuiltinFactory] = Registry("tool", {
    "get_time": "actors.tools.builtin:get_time",
    "calculator": "actors.tools.builtin:calculator",
    "knowledge_search": "actors.tools.builtin:knowledge_search",
}, error=ConfigError, where="tools.builtins")


async def build(name: str, ctx: BuiltinContext) -> Tool:
    tool = BUILTINS.load(name)(ctx)
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


class TimeTool(Tool):
    """The current date and time, in the local zone unless the user asked for another
    (see actors/tools/clock.py for how a zone the model passes is judged)."""

    SAID_TURNS = 3  # the user inputs that may name the place: this turn's and the two before

    def __init__(self, bus: Bus | None, data_dir: Path | None = None) -> None:
        # No example zone anywhere: small models copy it into every call.
        self.spec = ToolSpec(
            name="get_time",
            description=("The current date and time. Without a time zone it is the user's "
                         "local time. Pass a time zone only when the user names a place or "
                         "a time zone."),
            parameters={"type": "object", "properties": {"timezone": {
                "type": "string",
                "description": ("only when the user names a place or time zone: the IANA time "
                                "zone name of that place; leave it out otherwise"),
            }}},
        )
        self.bus = bus
        self.data_dir = data_dir
        self._assistants: Any = None

    async def call(self, arguments: dict[str, Any]) -> str:
        from actors.tools.clock import answer

        said, language = await self._said()
        # The first call reads tzdata's tables: off the event loop.
        return await asyncio.to_thread(answer, arguments, said, language)

    async def _said(self) -> tuple[list[str] | None, str]:
        """What the user said up to this call's turn (None outside a session), and the
        language the session is answered in."""
        from actors.assistant import AssistantDirectory, answer_language
        from bus.log import load

        call = current_call.get()
        if call is None or self.bus is None:
            return None, "en"
        entries, _ = await load(self.bus, "session", call.session_id)
        events = [e.event for e in entries]
        if self._assistants is None:
            self._assistants = AssistantDirectory(self.bus, self.data_dir)
        language = answer_language(await self._assistants.for_events(events), events, call.turn_id)
        inputs = [e for e in events if isinstance(e, UserText | TranscriptFinal)]
        upto = next((i for i, e in enumerate(inputs) if e.id == call.turn_id), None)
        if upto is None:
            return None, language
        return [e.text for e in inputs[max(0, upto + 1 - self.SAID_TURNS):upto + 1]], language


def get_time(ctx: BuiltinContext) -> Tool:
    return TimeTool(ctx.bus, ctx.data_dir)


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


# --- knowledge_search: the session's assistant's documents ----------------------------

KNOWLEDGE_HITS = 4
KNOWLEDGE_HIT_CHARS = 700


class KnowledgeSearch(Tool):
    """Hybrid search in the documents of the session's assistant, scoped to its owner.
    The dialogue offers it only to sessions whose assistant has documents. The search
    stack (LanceDB, the embedding model) loads on the first call, not with the catalog."""

    timeout = 30.0  # the first call loads the embedding model

    def __init__(self, bus: Bus | None, data_dir: Path | None, embed_threads: int = 0) -> None:
        self.spec = ToolSpec(
            name="knowledge_search",
            description=("Search this assistant's documents (manuals, policies, notes) for "
                         "passages that answer a question. Use it whenever the question may "
                         "be answered by those documents, then answer from the passages and "
                         "name the document title you used."),
            parameters={"type": "object", "properties": {"query": {
                "type": "string",
                "description": "the question or the key words to look for",
            }}, "required": ["query"]},
            source="kb",
        )
        self.bus = bus
        self.data_dir = data_dir
        self.embed_threads = embed_threads  # [knowledge] embed_threads
        self._assistants: Any = None

    async def call(self, arguments: dict[str, Any]) -> str:
        from actors.assistant import AssistantDirectory, answer_language
        from bus.log import load
        from projections.knowledge.search import search

        query = arguments.get("query")
        if isinstance(query, list):
            query = " ".join(str(q) for q in query)
        if not isinstance(query, str) or not query.strip():
            raise ToolError("knowledge_search: give a non-empty 'query' string")
        call = current_call.get()
        if call is None or self.bus is None:
            raise ToolError("knowledge_search works only within a session")
        if self._assistants is None:
            self._assistants = AssistantDirectory(self.bus, self.data_dir)
        entries, _ = await load(self.bus, "session", call.session_id)
        events = [e.event for e in entries]
        profile = await self._assistants.for_events(events)
        said = phrases(answer_language(profile, events, call.turn_id))
        if profile is None or not profile.documents:
            return said.no_documents
        if self.data_dir is None:
            raise ToolError("knowledge_search: this tools actor runs without a data directory")
        hits = await search(query, owner_id=profile.owner_id, data_dir=self.data_dir,
                            document_ids=profile.documents, limit=KNOWLEDGE_HITS,
                            embed_threads=self.embed_threads)
        if not hits:
            return said.nothing_found.format(query=query.strip())
        return format_hits(hits)


def format_hits(hits: list[Any]) -> str:
    """One passage per hit, each led by its document's title in brackets, so the answer
    can cite it."""
    parts = []
    for hit in hits:
        text = " ".join(hit.text.split())
        if len(text) > KNOWLEDGE_HIT_CHARS:
            text = text[:KNOWLEDGE_HIT_CHARS].rsplit(" ", 1)[0] + " …"
        section = (hit.heading or "").split(" › ")[-1]
        where = f" ({section})" if section and section != hit.title else ""
        parts.append(f"[{hit.title}]{where} {text}")
    return "\n\n".join(parts)


def knowledge_search(ctx: BuiltinContext) -> Tool:
    return KnowledgeSearch(ctx.bus, ctx.data_dir, ctx.config.knowledge.embed_threads)
