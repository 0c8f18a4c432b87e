"""The dialogue actor: user input becomes a streamed LLM answer, with tools.

- `user.text` / `transcript.final` open a turn: `turn.started`, token deltas on the live
  subject, `assistant.sentence` as soon as each sentence is complete, and a final
  `assistant.message` (text, provider, model, usage, time to first token, total time).
- When the model calls tools, the step ends with an `assistant.message` carrying the
  calls and one `tool.call` each; the tools actor answers with `tool.result`, and the
  last missing result resumes the turn. At most `max_steps` rounds, then no tools.
- Tool calls written as text are never shown or spoken (`ToolTextGuard`); a call to a tool
  that was not offered is repaired, or answered with an error once, or the user hears a
  short apology; what the model wrote is kept in `assistant.message.withheld`.
- An assistant with documents has the question looked up before the model's first step:
  the dialogue calls the search tool itself, and the model starts with its result.
- Stateless: each step rebuilds its context from the session's own log.
- One turn at a time per session, ordered by the log: a turn ends with exactly one
  `assistant.message` that is not a tool step (its closing message). It is appended on the
  condition that the session's log has not moved since the dialogue last read it
  (`Nats-Expected-Last-Subject-Sequence`) and held nothing that ends the turn: a later input,
  or a `turn.interrupted` for it. An input stored before the closing message interrupts the
  turn once (`turn.interrupted` reason `new_input` and the closing message with
  `interrupted`, holding what was produced); an input stored after it starts the next turn
  and leaves the finished one alone. A new input seen while a turn streams cancels the
  stream early, once the log shows it.
- A session's end (hang-up, closed socket; not the dialogue's own goodbye) ends its running
  turn the same way: the stream is cut (its HTTP request closed) once the log shows
  `session.ended`, and the turn closes as interrupted (`turn.interrupted` reason
  `session_ended`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from actors.assistant import (
    DEFAULT_ASSISTANT_ID,
    AssistantDirectory,
    AssistantProfile,
    answer_language,
)
from actors.base import Actor, Context
from actors.dialogue.deltas import LiveText
from actors.dialogue.history import build_messages
from actors.dialogue.intents import is_exit_intent
from actors.dialogue.providers import ProviderChain, ProviderFailed
from actors.dialogue.sentences import Sentence, SentenceSplitter, code_spoken
from actors.dialogue.toolcall_adapter import ToolTextGuard, repair
from actors.tools.catalog import catalog
from actors.tools.spec import ToolSpec, openai_tool
from actors.watch import Watch
from bus.client import Bus
from bus.errors import BusError, ConflictError
from bus.log import Entry
from domain.phrases import localized, phrases
from schemas import (
    AssistantDelta,
    AssistantMessage,
    AssistantSentence,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    SessionTools,
    ToolCall,
    ToolCallRef,
    ToolResult,
    TranscriptFinal,
    TurnInterrupted,
    TurnStarted,
    Usage,
    UserText,
    derived_id,
)
from schemas.session import InterruptReason
from settings.config import Config, ProviderConfig
from settings.llm import provider_configs
from telemetry import tracing

log = logging.getLogger("vagent.dialogue")

INPUTS = (UserText, TranscriptFinal)
CATALOG_TTL = 5.0
# How long a new input seen on core NATS (which may deliver it before JetStream has stored
# it) is looked for in the log before the running stream is cut for it.
CONFIRM_SECONDS = 2.0
# Reads and conditional appends a closing may take while other writers keep appending to
# the session (each attempt reads what they appended); then the handler fails and retries.
FINISH_ATTEMPTS = 50
SELF = "vagent"  # assistant.message.provider of what the dialogue says or does itself


def order_by_turn(entries: list[Entry]) -> list[Entry]:
    """Log order, except that a turn's late events (an interrupted answer stored after the
    next input) stay with their turn, so the history reads as the conversation went."""
    opened = {e.event.id: e.seq for e in entries if isinstance(e.event, INPUTS)}

    def key(entry: Entry) -> tuple[int, int]:
        turn = getattr(entry.event, "turn_id", None)
        return (opened.get(turn, entry.seq), entry.seq) if turn else (entry.seq, entry.seq)

    return sorted((e for e in entries if e.event is not None), key=key)


def hung_up(event: Event) -> bool:
    """Whether `event` ends a session with nobody left to hear it: every `session.ended` but
    the dialogue's own after its goodbye (the goodbye is still to be said)."""
    return isinstance(event, SessionEnded) and event.reason != "user_exit"


def ending(entries: list[Entry], turn_id: str) -> Event | None:
    """What ended the turn in the log, if anything did: the first event after its input that
    is a later input with words (the next turn), a `turn.interrupted` for this turn (or for
    whichever is current: `turn_id` None), or the session's end. Only what comes before the
    turn's closing message matters; the caller looks for that first."""
    opened = False
    for entry in entries:
        event = entry.event
        if event is None:
            continue
        if not opened:
            opened = event.id == turn_id
        elif isinstance(event, INPUTS) and event.text.strip():
            return event
        elif isinstance(event, TurnInterrupted) and event.turn_id in (None, turn_id):
            return event
        elif hung_up(event):
            return event
    return None


def interrupt_reason(stop: Event) -> InterruptReason:
    """The `turn.interrupted` reason of what ended a turn (`ending`)."""
    if isinstance(stop, TurnInterrupted):
        return stop.reason
    return "session_ended" if isinstance(stop, SessionEnded) else "new_input"


def closed(turn: Sequence[Event | None]) -> bool:
    """Whether a turn's events hold its closing message: an `assistant.message` that is not
    a tool step (an answer, or what was produced before an interruption)."""
    return any(isinstance(e, AssistantMessage) and not e.tool_calls for e in turn)


def closing_id(actor: str, turn_id: str) -> str:
    """The id of a turn's closing message, answer or interruption alike: one per turn, so a
    retried or redelivered closing is stored once, and a client that saw a closing message
    JetStream refused (core NATS delivers a rejected conditional append too) does not see
    the one stored in its place as another."""
    return derived_id(turn_id, f"{actor}.closing", 0)


def system_prompt(profile: AssistantProfile | None, configured: str, language: str) -> str:
    """The persona the model is given: the assistant's, else the configured system prompt;
    the built-in one (a new account's assistant starts with it) in the session's language.
    A persona someone wrote is told the answer's language when it is not English: it may be
    written in any language. The same for every turn in one language, so local servers
    reuse their prompt cache."""
    persona = (profile.persona if profile else "") or configured
    prompt = localized(persona, language, "persona")
    if prompt != persona or language == "en":
        return prompt
    return f"{persona}\n\n{phrases(language).answer_in}"


def session_tools(shared: list[ToolSpec], entries: list[Entry]) -> tuple[list[ToolSpec], set[str]]:
    """The shared catalog plus this session's own tools (the latest `session.tools`), and the
    names of the latter, whose calls go back to the session's edge (a device's MCP tools)."""
    latest = next((e.event for e in reversed(entries) if isinstance(e.event, SessionTools)), None)
    if latest is None:
        return shared, set()
    taken = {s.name for s in shared}
    own = [ToolSpec(name=t.name, description=t.description, parameters=t.parameters,
                    source=latest.source) for t in latest.tools if t.name not in taken]
    return sorted(shared + own, key=lambda s: s.name), {s.name for s in own}


def enabled_tools(shared: list[ToolSpec], profile: AssistantProfile | None) -> list[ToolSpec]:
    """The assistant's enabled tools; an assistant that lists none gets every server tool.
    Knowledge-base tools (`knowledge_search`) only for an assistant with documents, and
    then whether or not it lists them: its documents are what it knows."""
    has_documents = profile is not None and bool(profile.documents)
    if not has_documents:
        shared = [spec for spec in shared if spec.source != "kb"]
    if profile is None or not profile.tools:
        return shared
    enabled = set(profile.tools)
    return [spec for spec in shared if spec.name in enabled or spec.source == "kb"]


def resolve_calls(calls: list[ToolCallRef], known: set[str]
                  ) -> tuple[list[ToolCallRef], list[ToolCallRef], str | None]:
    """The calls to make, those among them naming no offered tool (to be refused), and the
    model's originals of the calls that were changed (as JSON), if any. A call to a tool
    that does not exist becomes a call to one that does what it asks when its arguments
    fit (`square_root` → `calculator`)."""
    asked: list[ToolCallRef] = []
    refused: list[ToolCallRef] = []
    changed: list[dict[str, str]] = []
    for call in calls:
        fixed = None if call.name in known else repair(call.name, call.arguments, known)
        if fixed is not None:
            changed.append({"name": call.name, "arguments": call.arguments})
            call = ToolCallRef(call_id=call.call_id, name=fixed[0], arguments=fixed[1])
        elif call.name not in known:
            refused.append(call)
        asked.append(call)
    originals = json.dumps(changed, ensure_ascii=False) if changed else None
    return asked, refused, originals


def trace_llm_call(parent: str | None, asked_ns: int, provider: str, requested: str,
                   model: str, usage: Usage, ttft_ms: float | None, total_ms: float) -> None:
    """The span of one LLM call (OpenTelemetry's GenAI conventions), from the request to the
    stream's end; its first token is an event at the time it came (`ttft_ms` and `total_ms`
    count from the step's start, which the request followed)."""
    now = time.time_ns()
    step_ns = now - int(total_ms * 1e6)  # when the step started, on the wall clock
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": "chat", "gen_ai.system": provider,
        "gen_ai.provider.name": provider, "gen_ai.request.model": requested,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens}
    events: list[tuple[str, int, dict[str, str | int | float]]] = []
    if ttft_ms is not None:
        first_ns = step_ns + int(ttft_ms * 1e6)
        attributes["gen_ai.response.time_to_first_token_ms"] = max(0.0, (first_ns - asked_ns) / 1e6)
        events.append(("gen_ai.first_token", max(first_ns, asked_ns), {}))
    tracing.record(f"chat {requested}", parent, asked_ns, now, attributes=attributes,
                   events=events, kind=tracing.CLIENT)


@dataclass
class _Outcome:
    """How a step ends, recorded only if nothing ended the turn first (`Dialogue._finish`)."""

    # The event that decides: the answer (the turn's closing message), a tool step's
    # assistant.message, or an error; None when the step has nothing of its own to record
    # (the turn was ended before it could say anything).
    head: AssistantMessage | Error | None
    tail: list[Event] = field(default_factory=list)  # what follows it: tool calls, session.ended


@dataclass
class _Run:
    """One streaming step of a turn, observable after a cancellation."""

    session_id: str
    turn_id: str
    task: asyncio.Task[_Outcome | None] | None = None
    interrupt_reason: str | None = None
    parts: list[str] = field(default_factory=list)
    sentences: int = 0
    began: asyncio.Task[Any] | None = None  # the turn.started append, still in flight
    checking: asyncio.Task[None] | None = None  # the watcher looking for its input in the log
    live: LiveText | None = None  # the deltas to the client, made at the first

    async def stored(self) -> None:
        """Wait for turn.started to be durable: nothing of the turn is published before it.
        Shielded: an interruption must not cancel the append itself."""
        if self.began is not None:
            await asyncio.shield(self.began)

    def interrupt(self, reason: str) -> None:
        if self.task and not self.task.done() and self.interrupt_reason is None:
            self.interrupt_reason = reason
            self.task.cancel()


class Dialogue(Actor):
    name: ClassVar[str] = "dialogue"
    consumes: ClassVar[tuple[str, ...]] = ("session.started", "user.text", "transcript.final",
                                           "tool.result")
    emits: ClassVar[frozenset[str]] = frozenset({
        "turn.started", "assistant.sentence", "assistant.message", "tool.call", "tool.result",
        "turn.interrupted", "session.ended", "error"})
    concurrency: ClassVar[int] = 64

    def __init__(self, bus: Bus, config: Config | None = None, data_dir: Path | None = None,
                 providers: list[ProviderConfig] | None = None) -> None:
        """`providers`: these LLM providers instead of the configured ones (a replay's)."""
        super().__init__(bus, config, data_dir)
        self.providers = providers

    async def setup(self) -> None:
        self.chain = ProviderChain(self.providers or provider_configs(self.config),
                                   self.config.llm.breaker)
        self.runs: dict[str, _Run] = {}
        self.assistants = AssistantDirectory(self.bus, self.data_dir)
        self._catalog: list[ToolSpec] = []
        self._catalog_expires = 0.0
        # Inputs are seen here as soon as they are stored, while this session's previous
        # event may still be in the handler: that is how a new input interrupts a turn.
        self._watch = await Watch(self.bus, ("user.text", "transcript.final", "turn.interrupted",
                                             "session.ended"), self._watched).start()

    async def teardown(self) -> None:
        await self._watch.stop()
        await self.chain.close()

    async def _watched(self, event: Event) -> None:
        """A hint that the running turn may be over: the stream is cut only once the log
        shows what ended the turn (`_confirm`)."""
        run = self.runs.get(getattr(event, "session_id", ""))
        if run is None or (run.checking is not None and not run.checking.done()):
            return
        if ((isinstance(event, INPUTS) and event.id != run.turn_id and event.text.strip())
                or (isinstance(event, TurnInterrupted) and event.turn_id in (None, run.turn_id))
                or hung_up(event)):
            run.checking = asyncio.create_task(self._confirm(run))

    async def _confirm(self, run: _Run) -> None:
        """Cut `run`'s stream once the session's log holds what ends its turn; give up after
        CONFIRM_SECONDS (the hint was a publish JetStream did not store) or when the step is
        over (its closing then reads the log itself)."""
        deadline = time.monotonic() + CONFIRM_SECONDS
        delay = 0.002
        try:
            while run.task is not None and not run.task.done():
                entries, _ = await self.log.load("session", run.session_id)
                stop = ending(entries, run.turn_id)
                if stop is not None:
                    run.interrupt(interrupt_reason(stop))
                    return
                if time.monotonic() + delay > deadline:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        except Exception as exc:  # only a hint (NATS away?): the step's closing reads the log
            log.debug("interruption not confirmed: %r", exc)

    # --- handling -------------------------------------------------------------------

    async def handle(self, event: Event, ctx: Context) -> None:
        if isinstance(event, INPUTS):
            await self._start_turn(event, ctx)
        elif isinstance(event, ToolResult):
            await self._resume_after_tools(event, ctx)
        elif isinstance(event, SessionStarted):
            await self._greet(event, ctx)

    async def _greet(self, event: SessionStarted, ctx: Context) -> None:
        """The assistant's greeting, spoken as a turn of its own (named after session.started);
        not again when a client resumes the session."""
        if event.resumed:
            return
        profile = await self.assistants.get(event.assistant_id or DEFAULT_ASSISTANT_ID)
        greeting = (profile.greeting or "").strip() if profile else ""
        if greeting:
            sid, turn_id = event.session_id, event.id
            await ctx.emit(AssistantSentence(session_id=sid, turn_id=turn_id, text=greeting))
            await ctx.emit(AssistantMessage(session_id=sid, turn_id=turn_id, text=greeting,
                                            provider=SELF, total_ms=0.0))

    async def _start_turn(self, event: UserText | TranscriptFinal, ctx: Context) -> None:
        sid, turn_id = event.session_id, event.id  # a turn is named after its input
        if not event.text.strip():
            return
        started = time.perf_counter()
        settings = self.config.dialogue
        if is_exit_intent(event.text, settings.exit_phrases):
            entries, _ = await self.log.load("session", sid)
            events = [e.event for e in entries]
            language = answer_language(await self.assistants.for_events(events), events, turn_id)
            goodbye = localized(settings.goodbye, language, "goodbye")
            await ctx.emit(TurnStarted(session_id=sid, turn_id=turn_id, input_id=event.id))
            await ctx.emit(AssistantSentence(session_id=sid, turn_id=turn_id, text=goodbye))
            # Closed like any answer: an input stored before it interrupts the goodbye, and
            # then the session goes on.
            await self._finish(ctx, _Run(sid, turn_id, parts=[goodbye]), _Outcome(
                AssistantMessage(session_id=sid, turn_id=turn_id, text=goodbye,
                                 provider=SELF, total_ms=0.0),
                [SessionEnded(session_id=sid, turn_id=turn_id, reason="user_exit")]))
            return
        # Appended while the log is read and the provider opens its stream: its fsync is
        # off the path to the first token. The handler still returns (and acks) only after.
        began = ctx.emit_soon(TurnStarted(session_id=sid, turn_id=turn_id, input_id=event.id))
        try:
            await self._step(ctx, sid, turn_id, started, began=began)
        finally:
            await began

    async def _resume_after_tools(self, event: ToolResult, ctx: Context) -> None:
        if event.turn_id is None:
            return
        entries, _ = await self.log.load("session", event.session_id)
        turn = [e.event for e in entries if getattr(e.event, "turn_id", None) == event.turn_id]
        if closed(turn):
            return  # interrupted (or answered) while the tools ran
        asked = [i for i, e in enumerate(turn) if isinstance(e, AssistantMessage) and e.tool_calls]
        if not asked:
            return
        step = turn[asked[-1]]
        assert isinstance(step, AssistantMessage)
        if any(isinstance(e, AssistantMessage) for e in turn[asked[-1] + 1:]):
            return  # an earlier result already resumed this step
        answered = {e.call_id for e in turn if isinstance(e, ToolResult)}
        if all(call.call_id in answered for call in step.tool_calls):
            started = time.perf_counter()
            opened = next((e for e in turn if isinstance(e, TurnStarted)), None)
            if opened is not None and all(m.provider == SELF for m in turn
                                          if isinstance(m, AssistantMessage)):
                # Only the dialogue's own search came before: the model's first token is the
                # turn's, so it is timed from the turn's start, as the user waited.
                started -= max(0.0, (time.time_ns() - opened.ts) / 1e9)
            await self._step(ctx, event.session_id, event.turn_id, started)

    async def _step(self, ctx: Context, sid: str, turn_id: str, started: float, *,
                    began: asyncio.Task[Any] | None = None) -> None:
        run = _Run(sid, turn_id, began=began)
        self.runs[sid] = run
        run.task = asyncio.create_task(self._stream(ctx, run, started))
        outcome: _Outcome | None
        try:
            outcome = await run.task
        except asyncio.CancelledError:
            if run.interrupt_reason is None:
                raise  # this handler itself is being cancelled (shutdown): redelivered later
            outcome = _Outcome(None)  # cut short: what was produced is in run.parts
        finally:
            if self.runs.get(sid) is run:
                del self.runs[sid]
            if run.checking is not None:
                run.checking.cancel()
            if run.live is not None:
                run.live.close()
        if outcome is not None:
            # Outside the stream's task: the watcher can cut the stream, never the closing.
            await self._finish(ctx, run, outcome)

    async def _finish(self, ctx: Context, run: _Run, outcome: _Outcome) -> None:
        """Record how the step ended, ordered against the session's other writers by the log.

        The log is read, and the step's head is appended only if nothing in it ended the
        turn, on the condition that the log has not moved since
        (`Nats-Expected-Last-Subject-Sequence`): an input stored a moment later comes after
        the answer and starts the next turn. Otherwise the turn closes as interrupted, once:
        an `assistant.message` with what was produced and `interrupted`, and for a new input
        or the session's end a `turn.interrupted` (reason `new_input`, `session_ended`),
        stored together, with no condition: what ended the turn is in the log for good.
        Another writer's append in between (a tts event, a client's) only means reading again.
        """
        await run.stored()
        sid, turn_id = run.session_id, run.turn_id
        head = outcome.head
        if head is not None:
            # Named before the first attempt, so an attempt repeated after a conflict (or by
            # a redelivery) is the same event; a turn's answer has its closing id.
            answer = isinstance(head, AssistantMessage) and not head.tool_calls
            head = msgspec.structs.replace(
                head, causation_id=ctx.cause.id,
                id=closing_id(self.name, turn_id) if answer else derived_id(
                    ctx.cause.id, f"{self.name}.step", 0))
        for _ in range(FINISH_ATTEMPTS):
            entries, last = await self.log.load("session", sid)
            turn = [e.event for e in entries
                    if e.event is not None and getattr(e.event, "turn_id", None) == turn_id]
            stored = next((e for e in turn if head is not None and e.id == head.id), None)
            if stored is not None or closed(turn):
                # An earlier delivery (or an append whose acknowledgement was lost) got here
                # first: its follow-ups, if it was this very head, and nothing more.
                if stored is not None and not getattr(stored, "interrupted", False):
                    for event in outcome.tail:
                        await ctx.emit(event)
                return
            stop = ending(entries, turn_id)
            events: list[Event]
            if head is not None and stop is None:
                events = [head]
            else:
                spoken = "".join(run.parts)
                events = [AssistantMessage(
                    id=closing_id(self.name, turn_id), causation_id=ctx.cause.id, session_id=sid,
                    turn_id=turn_id, text=spoken, interrupted=True)]
                if stop is not None and not isinstance(stop, TurnInterrupted):
                    # A client's or the ASR's turn.interrupted already says why; a new input
                    # or the session's end does not.
                    events.append(TurnInterrupted(
                        id=derived_id(turn_id, f"{self.name}.closing", 1), causation_id=ctx.cause.id,
                        session_id=sid, turn_id=turn_id, reason=interrupt_reason(stop),
                        spoken_text=spoken))
            # Once the log holds what ended the turn, the closing is decided: what is appended
            # after it cannot change it, so it needs no condition. (Conditional, a flood of
            # inputs would refuse every attempt, each superseded turn of the flood retrying.)
            expected = last if stop is None else None
            try:
                if len(events) > 1:
                    await self.bus.append_batch(events, expected_last_seq=expected,
                                                traceparent=ctx.traceparent)
                elif expected is None:
                    await self.bus.publish(events[0], traceparent=ctx.traceparent)
                else:
                    await self.bus.append(events[0], expected, traceparent=ctx.traceparent)
            except ConflictError:
                continue  # appended to since it was read: read it again, decide again
            if events[0] is head:
                for event in outcome.tail:
                    await ctx.emit(event)
            return
        raise BusError(f"session {sid}: turn {turn_id} not closed after {FINISH_ATTEMPTS} "
                       "conflicting appends")  # redelivered later

    async def _stream(self, ctx: Context, run: _Run, started: float) -> _Outcome | None:
        """One step: the model's answer streamed out as deltas and sentences; its outcome
        is recorded by `_finish`. None: nothing to do (an earlier delivery did it)."""
        sid, turn_id = run.session_id, run.turn_id
        settings, tool_settings = self.config.dialogue, self.config.tools
        entries, _ = await self.log.load("session", sid)
        turn = [e.event for e in entries if getattr(e.event, "turn_id", None) == turn_id]
        if closed(turn) or (run.began is not None and any(
                isinstance(e, AssistantMessage) for e in turn)):
            return None  # a redelivered input whose turn was answered, or is waiting for tools
        if ending(entries, turn_id) is not None:
            # A later input (or an abort) is stored already: the model is not asked, and the
            # turn closes as interrupted with nothing said.
            return _Outcome(None)
        steps = sum(1 for e in turn if isinstance(e, AssistantMessage) and e.tool_calls)
        run.sentences = sum(1 for e in turn if isinstance(e, AssistantSentence))
        profile = await self.assistants.for_session(entries)
        specs: list[ToolSpec] = []
        device: set[str] = set()
        if steps < tool_settings.max_steps:
            specs, device = session_tools(enabled_tools(await self._tools(), profile), entries)
        known = {s.name for s in specs}
        if profile is not None and profile.documents and not any(
                isinstance(e, AssistantMessage) for e in turn):
            search = next((s for s in specs if s.source == "kb"), None)
            question = next((e.event for e in entries if e.event is not None and e.event.id == turn_id),
                            None)
            if search is not None and isinstance(question, INPUTS):
                return self._retrieve(run, search.name, question.text, started)
        language = answer_language(profile, [e.event for e in entries], turn_id)
        messages = build_messages(system_prompt(profile, settings.system_prompt, language),
                                  order_by_turn(entries), budget_tokens=settings.history_tokens)
        asked_ns = time.time_ns()
        try:
            answer = await self.chain.open(messages, [openai_tool(s) for s in specs] or None,
                                           prefer=profile.llm if profile else None)
        except ProviderFailed as exc:
            # Shown to the user (a device's screen): their language first, then why.
            return _Outcome(Error(session_id=sid, turn_id=turn_id, code="llm_unavailable",
                                  message=f"{phrases(language).llm_unavailable} "
                                          f"(no LLM provider answered: {exc})",
                                  retryable=True, source=self.name))
        # Closed however the step ends: a turn cut short (a new input, the session's end)
        # aborts its request instead of leaving the model generating for nobody.
        try:
            await run.stored()
            splitter = SentenceSplitter(first_clause_chars=settings.first_clause_chars)
            guard = ToolTextGuard()  # tool calls written as text are never shown or spoken
            calls: dict[int, dict[str, Any]] = {}
            usage, model = Usage(), answer.provider.config.model
            ttft_ms: float | None = None
            async for chunk in answer.chunks:
                model = chunk.model or model
                if chunk.usage:
                    usage = Usage(prompt_tokens=chunk.usage.prompt_tokens,
                                  completion_tokens=chunk.usage.completion_tokens)
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if ttft_ms is None and (delta.content or delta.tool_calls):
                    # A tool call is the model's first token too: a tool turn's first step has
                    # no text, and its later steps start only after the tools answered.
                    ttft_ms = (time.perf_counter() - started) * 1000
                for call in delta.tool_calls or []:
                    slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    slot["id"] = call.id or slot["id"]
                    if call.function:
                        slot["name"] += call.function.name or ""
                        slot["arguments"] += call.function.arguments or ""
                if delta.content:
                    await self._show(ctx, run, splitter, guard.feed(delta.content), started)
        finally:
            await answer.close()
        await self._show(ctx, run, splitter, guard.finish(), started)
        text = "".join(run.parts)
        found = [ToolCallRef(call_id=c["id"], name=c["name"], arguments=c["arguments"] or "{}")
                 for _, c in sorted(calls.items())]
        bare = guard.calls() if not found else None
        if bare:
            found = [ToolCallRef(call_id=derived_id(turn_id, "call", steps * 100 + i), name=name,
                                 arguments=arguments) for i, (name, arguments) in enumerate(bare)]
        asked, refused, originals = resolve_calls(found, known)
        withheld = "".join(guard.withheld) or originals
        retry = bool(specs) and not any(isinstance(e, ToolCall) and e.route == "dialogue" for e in turn)
        if refused and not retry:
            asked, refused = [], []  # no second chance: nothing runs, the turn ends here
        if not asked and not text.strip() and withheld:
            # Nothing to say and nothing to run: a short apology, never the call's JSON.
            await self._show(ctx, run, splitter, phrases(language).unusable_call, started)
            text = "".join(run.parts)
        if not asked:
            for sentence in splitter.flush():
                await self._say(ctx, run, sentence, started)
            if run.sentences == 0 and (code := code_spoken(text)):
                await self._say(ctx, run, Sentence(display=text.strip(), spoken=code), started)
        if run.live is not None:  # all of it shown before the closing message
            await run.live.flush()
        total_ms = (time.perf_counter() - started) * 1000
        if tracing.enabled():
            trace_llm_call(ctx.traceparent, asked_ns, answer.provider.name,
                           answer.provider.config.model, model, usage, ttft_ms, total_ms)
        unknown = {call.call_id for call in refused}
        tail: list[Event] = [
            ToolCall(session_id=sid, turn_id=turn_id, call_id=call.call_id, name=call.name,
                     arguments=call.arguments,
                     route=("dialogue" if call.call_id in unknown else "device"
                            if call.name in device else "tools"))
            for call in asked]
        # Refused calls are answered here, so the model can try again within the step budget.
        tail += [ToolResult(
            session_id=sid, turn_id=turn_id, call_id=call.call_id, name=call.name,
            content=(f"unknown tool {call.name!r}; available: {', '.join(sorted(known))}. "
                     "If none of them helps, answer in words."),
            is_error=True) for call in refused]
        return _Outcome(AssistantMessage(
            session_id=sid, turn_id=turn_id, text=text, model=model,
            provider=answer.provider.name, usage=usage, ttft_ms=ttft_ms, total_ms=total_ms,
            tool_calls=asked, withheld=withheld,
        ), tail)

    def _retrieve(self, run: _Run, tool: str, question: str, started: float) -> _Outcome:
        """Search the assistant's documents for the question before the model's first step.
        Small models do not call the search on their own ("every 15–30 minutes"
        instead of the manual's answer), and the search costs ~25 ms. It is an ordinary call of
        the search tool, made by the dialogue: the log, `session show` and replay see it, the
        model reads its result as a tool result, and the turn goes on when it arrives."""
        call = ToolCallRef(call_id=derived_id(run.turn_id, "retrieve", 0), name=tool,
                           arguments=json.dumps({"query": question}, ensure_ascii=False))
        return _Outcome(
            AssistantMessage(session_id=run.session_id, turn_id=run.turn_id, text="",
                             provider=SELF, tool_calls=[call],
                             total_ms=(time.perf_counter() - started) * 1000),
            [ToolCall(session_id=run.session_id, turn_id=run.turn_id, call_id=call.call_id,
                      name=call.name, arguments=call.arguments)])

    async def _show(self, ctx: Context, run: _Run, splitter: SentenceSplitter, text: str,
                    started: float) -> None:
        """Stream `text` to the client and speak its complete sentences."""
        if not text:
            return
        run.parts.append(text)
        if run.live is None:
            def publish(delta: str, index: int) -> Awaitable[None]:
                return ctx.live(AssistantDelta(session_id=run.session_id, turn_id=run.turn_id,
                                               text=delta, index=index))
            run.live = LiveText(publish)
        await run.live.add(text)
        sentences = splitter.feed(text)
        if sentences:  # the text is shown before it is spoken
            await run.live.flush()
        for sentence in sentences:
            await self._say(ctx, run, sentence, started)

    async def _tools(self) -> list[ToolSpec]:
        """The tool catalog, re-read at most every CATALOG_TTL seconds: it changes rarely,
        and reading KV on every turn would cost each turn a few milliseconds. An empty one
        is read again next turn: the tools actor may be starting beside this one."""
        now = time.monotonic()
        if now >= self._catalog_expires:
            self._catalog = await catalog(self.bus)
            self._catalog_expires = now + CATALOG_TTL if self._catalog else now
        return self._catalog

    async def _say(self, ctx: Context, run: _Run, sentence: Any, started: float) -> None:
        first = run.sentences == 0
        await ctx.emit(AssistantSentence(
            session_id=run.session_id, turn_id=run.turn_id, text=sentence.spoken,
            display_text=sentence.display if sentence.display != sentence.spoken else None,
            index=run.sentences,
            ttfs_ms=(time.perf_counter() - started) * 1000 if first else None,
        ))
        run.sentences += 1
