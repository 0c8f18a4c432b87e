"""A suite run through a temporary isolated stack, each turn judged by its expectations.

The stack is the replay's (`replay.engine.isolated_stack`): a NATS server of its own, the
read models and the actors in this process, gone when the run ends. Each conversation is a
session of its own with the suite's assistant; a typed turn is published as `user.text`, a
spoken one streamed into the session's `audio.in` as the replay streams a recorded
utterance, so the ASR hears it. A turn is over with its final answer (and, with TTS on, once
that answer was spoken); its expectations are then checked against its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bus.client import Bus
from bus.subjects import session_all
from domain.language import text_language
from evals.llms import JudgeLLM, Servers
from evals.suite import (
    SIMILARITY,
    Contains,
    Conversation,
    Expectation,
    Judge,
    Language,
    Latency,
    NotContains,
    Regex,
    SimilarTo,
    Suite,
    Tool,
    Turn,
)
from replay.engine import CHUNK_MS, RATE, Watch, final_answer, isolated_stack, speak, spoken
from replay.log import MS
from schemas import (
    AssistantCreated,
    AssistantDelta,
    AssistantMessage,
    AssistantSentence,
    AudioParams,
    Error,
    Event,
    SessionEnded,
    SessionStarted,
    ToolCall,
    TranscriptFinal,
    TtsStarted,
    UserText,
    new_id,
)
from settings.config import Config


@dataclass
class Check:
    """One expectation, checked: what was expected (as a person reads it), what was got."""

    expected: str
    ok: bool
    got: str = ""
    line: int = 0


@dataclass
class TurnResult:
    conversation: str
    n: int
    line: int
    input: str
    transcript: str | None = None  # what the ASR heard, for a spoken turn
    answer: str | None = None
    tools: list[str] = field(default_factory=list)  # "name(arguments)"
    latency_ms: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


@dataclass
class SuiteResult:
    name: str
    path: Path
    llm: str
    judge: str | None
    turns: list[TurnResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.turns)


async def run_suite(suite: Suite, config: Config, cache_dir: Path, *, llm: str | None = None,
                    llm_model: str | None = None, judge: str | None = None, judge_model: str | None = None,
                    timeout: float = 120.0, on_turn: Callable[[TurnResult], None] | None = None
                    ) -> SuiteResult:
    """`llm` (echo, local, default or a base URL) and `llm_model` replace the suite's
    provider; `judge` names the judge LLM (else the configured chain's, if any); `cache_dir`
    is where a local model is assembled."""
    began = time.monotonic()
    servers = Servers(config, cache_dir)
    judge_llm: JudgeLLM | None = None
    try:
        kind, url = suite.provider.kind, suite.provider.url
        if llm is not None:
            kind, url = ("url", llm) if llm.startswith(("http://", "https://")) else (llm, None)
        providers = await servers.providers(kind, url, llm_model or suite.provider.model)
        judged_by = await servers.judge(judge, judge_model)
        judge_llm = JudgeLLM(judged_by) if judged_by else None
        aid = f"eval-{new_id()}" if suite.assistant else None
        seed = [AssistantCreated(assistant_id=aid, name=suite.assistant.name, persona=suite.assistant.persona,
                                 language=suite.assistant.language,  # type: ignore[arg-type]
                                 tools=list(suite.assistant.tools))] if suite.assistant and aid else []
        results: list[TurnResult] = []
        async with isolated_stack(config, seed=seed, providers=providers, voice=suite.voice,
                                  tts=suite.speaks, name="eval") as stack:
            for conversation in suite.conversations:
                results += await _conversation(stack.bus, conversation, aid, suite, judge_llm,
                                               timeout, on_turn)
        return SuiteResult(name=suite.name, path=suite.path, llm=stack.llm,
                           judge=judge_llm.name if judge_llm else None, turns=results,
                           seconds=time.monotonic() - began)
    finally:
        if judge_llm is not None:
            await judge_llm.close()
        await servers.close()


async def _conversation(bus: Bus, conversation: Conversation, aid: str | None, suite: Suite,
                        judge: JudgeLLM | None, timeout: float,
                        on_turn: Callable[[TurnResult], None] | None) -> list[TurnResult]:
    sid = f"eval-{new_id()}"
    watch = Watch()
    # Every subject of the session: deltas are live-only, and the first one is a latency.
    sub = await bus.subscribe(session_all(sid), watch.on_message)
    results = []
    try:
        await bus.flush()
        await bus.publish(SessionStarted(
            session_id=sid, transport="eval", assistant_id=aid,
            audio_in=AudioParams(format="pcm16", sample_rate=RATE, frame_duration=CHUNK_MS)))
        if suite.voice:
            await asyncio.sleep(0.3)  # the ASR worker subscribes to the session's audio
        for n, turn in enumerate(conversation.turns, start=1):
            began = time.monotonic()
            result = await _turn(bus, sid, watch, turn, n, conversation.name, suite.speaks, judge, timeout)
            result.seconds = time.monotonic() - began
            results.append(result)
            if on_turn:
                on_turn(result)
    finally:
        await sub.stop()
    return results


async def _turn(bus: Bus, sid: str, watch: Watch, turn: Turn, n: int, conversation: str, tts: bool,
                judge: JudgeLLM | None, timeout: float) -> TurnResult:
    result = TurnResult(conversation=conversation, n=n, line=turn.line, input=turn.input)
    mark = watch.mark()
    if turn.audio is not None:
        await speak(bus, sid, turn.pcm)

        def transcript(events: list[Event]) -> TranscriptFinal | None:
            return next((e for e in events[mark:] if isinstance(e, TranscriptFinal)), None)

        try:
            heard = await watch.until(transcript, min(timeout, 60), "transcript")
        except TimeoutError:
            result.checks.append(Check("a transcript", False, "the ASR made no transcript of the audio",
                                       turn.line))
            return result
        turn_id, result.transcript = heard.id, heard.text
    else:
        assert turn.say is not None
        typed = UserText(session_id=sid, text=turn.say, source="eval")
        await bus.publish(typed)
        turn_id = typed.id
    try:
        end = await watch.until(final_answer(turn_id), timeout, "answer")
    except TimeoutError:
        end = None
    said = any(isinstance(e, AssistantSentence) and e.turn_id == turn_id for e in watch.events)
    if tts and said and isinstance(end, AssistantMessage):
        # Spoken to the end before the next turn, as a user would listen; speech that never
        # comes fails a `first_audio_ms` budget, not the answer.
        with contextlib.suppress(TimeoutError):
            await watch.until(spoken(turn_id), timeout, "spoken")
    events = [e for e in watch.events if e.id == turn_id or getattr(e, "turn_id", None) == turn_id]
    result.tools = [f"{e.name}({e.arguments})" for e in events if isinstance(e, ToolCall)]
    result.latency_ms = latencies(events, turn_id)
    if isinstance(end, AssistantMessage):
        result.answer = end.text
        result.checks.append(Check("an answer", True, "", turn.line))
    else:
        got = (f"{end.code}: {end.message}" if isinstance(end, Error)
               else "the session ended" if isinstance(end, SessionEnded) else f"none within {timeout:.0f} s")
        result.checks.append(Check("an answer", False, got, turn.line))
        return result
    said_text = result.transcript if result.transcript is not None else turn.input
    for expectation in turn.expect:
        result.checks.append(await check(expectation, result, events, said_text, judge))
    return result


def latencies(events: list[Event], turn_id: str) -> dict[str, float]:
    """A turn's stages in ms, from the end of speech (a spoken turn) or the typed input, as
    the events' own times say."""
    opening = next((e for e in events if e.id == turn_id), None)
    if opening is None:
        return {}
    out: dict[str, float] = {}
    start = opening.ts
    if isinstance(opening, TranscriptFinal) and opening.speech_stopped_ts is not None:
        start = opening.speech_stopped_ts
        out["transcript_ms"] = (opening.ts - start) / MS
    firsts: list[tuple[str, type | tuple[type, ...]]] = [
        ("first_delta_ms", AssistantDelta), ("first_sentence_ms", AssistantSentence),
        ("first_audio_ms", TtsStarted)]
    for name, kind in firsts:
        ts = min((e.ts for e in events if isinstance(e, kind)), default=None)
        if ts is not None:
            out[name] = (ts - start) / MS
    final = next((e for e in events if isinstance(e, AssistantMessage) and not e.tool_calls), None)
    if final is not None:
        out["answer_ms"] = (final.ts - start) / MS
    return out


NO_JUDGE = "no judge LLM: pass --judge-llm or configure [llm]"


def similarity(a: str, b: str) -> float:
    """How alike two answers read (0..1): words compared, case and punctuation aside."""
    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    return difflib.SequenceMatcher(None, words(a), words(b)).ratio()


def _quote(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[:width - 1] + "…")


async def check(expectation: Expectation, result: TurnResult, events: list[Event], said: str,
                judge: JudgeLLM | None) -> Check:
    answer = result.answer or ""
    line = expectation.line
    match expectation:
        case Contains(text=text):
            return Check(f"contains {text!r}", text.lower() in answer.lower(), _quote(answer), line)
        case NotContains(text=text):
            return Check(f"not_contains {text!r}", text.lower() not in answer.lower(), _quote(answer), line)
        case Regex(pattern=pattern):
            return Check(f"regex {pattern!r}", re.search(pattern, answer) is not None, _quote(answer), line)
        case Language(language=language):
            found = text_language(answer)
            return Check(f"language {language}", found == language, f"{found or 'neither'}: {_quote(answer)}",
                         line)
        case Latency(stage=stage, budget_ms=budget):
            took = result.latency_ms.get(stage)
            return Check(f"{stage} ≤ {budget:.0f}", took is not None and took <= budget,
                         "not reached" if took is None else f"{took:.0f} ms", line)
        case Tool():
            return _tool(expectation, [e for e in events if isinstance(e, ToolCall)])
        case Judge(prompt=prompt):
            if judge is None:
                return Check(f"judge {prompt!r}", False, NO_JUDGE, line)
            met, words = await judge.ask(prompt, said, answer)
            return Check(f"judge {prompt!r}", bool(met), f"{words} ({_quote(answer)})", line)
        case SimilarTo(text=text, threshold=threshold):
            if judge is None or threshold is not None:
                need = threshold if threshold is not None else SIMILARITY
                score = similarity(answer, text)
                return Check(f"similar_to {_quote(text, 40)} (≥ {need:.2f})", score >= need,
                             f"{score:.2f}: {_quote(answer)}", line)
            met, words = await judge.ask(
                f"The answer says what this reference answer says (wording may differ): {text}", said, answer)
            return Check(f"similar_to {_quote(text, 40)} (judged)", bool(met), f"{words} ({_quote(answer)})",
                         line)
    raise AssertionError(f"unchecked expectation {expectation!r}")


def _tool(expected: Tool, calls: list[ToolCall]) -> Check:
    wanted = expected.name
    if expected.arguments:
        wanted += f" {json.dumps(expected.arguments, ensure_ascii=False)}"
    wanted += "".join(f" {k}~/{v}/" for k, v in expected.arguments_match.items())
    got = "; ".join(f"{c.name}({c.arguments})" for c in calls) or "no tool called"
    for call in calls:
        if call.name != expected.name:
            continue
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {}
        if not isinstance(arguments, dict):
            arguments = {}
        same = all(k in arguments and arguments[k] == v for k, v in expected.arguments.items())
        matched = all(k in arguments and re.search(p, a if isinstance(a := arguments[k], str)
                                                   else json.dumps(a, ensure_ascii=False))
                      for k, p in expected.arguments_match.items())
        if same and matched:
            return Check(f"tool {wanted}", True, got, expected.line)
    return Check(f"tool {wanted}", False, got, expected.line)
