"""`vagent bench local-llm`: the local model candidates side by side.

For each candidate it measures two things on this machine:
- the runtime: llama.cpp's own timings over fixed prompts (prompt and generation tokens/s,
  time to first streamed token) and the server's peak RSS;
- the eval set (`benches/local_llm_eval.toml`) asked through vagent's real dialogue and
  tools actors on a temporary bus: the score, and user.text → first delta / first sentence.

A server that vagent did not start (another llama.cpp build, say) is measured the same way
with `--base-url` (and `--pid` for its memory).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx

from actors.dialogue.actor import Dialogue
from actors.runtime import ActorHost
from actors.tools.actor import Tools
from benches.common import bench_nats, percentile
from benches.eval_set import Question, load_eval_set, score
from bus.client import Bus, Message
from bus.subjects import session_all
from schemas import AssistantMessage, DecodeError, UserText, decode, new_id
from settings.config import Config
from settings.llm import local_provider

RUNTIME_PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Write a short paragraph about a cat who learns to cook.",
    "List five things to pack for a weekend hiking trip, with a reason for each.",
]
FIRST_SENTENCE_GOAL_MS = 400.0
TURN_TIMEOUT_S = 120.0


@dataclass
class Answer:
    id: str
    category: str
    ask: str
    answer: str
    asked_at: str  # ISO time, server local: what the time and date rules compare with
    first_delta_ms: float | None
    first_sentence_ms: float | None
    tokens_per_s: float | None
    passed: bool = False


@dataclass
class Candidate:
    label: str
    runtime: dict[str, float] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        delta = sorted(a.first_delta_ms for a in self.answers if a.first_delta_ms is not None)
        sentence = sorted(a.first_sentence_ms for a in self.answers if a.first_sentence_ms is not None)
        rates = [a.tokens_per_s for a in self.answers if a.tokens_per_s]
        out: dict[str, Any] = {"model": self.label, **self.runtime}
        if self.answers:
            out |= {
                "score": sum(a.passed for a in self.answers), "questions": len(self.answers),
                "first_delta_p50_ms": percentile(delta, 50) if delta else None,
                "first_delta_p95_ms": percentile(delta, 95) if delta else None,
                "first_sentence_p50_ms": percentile(sentence, 50) if sentence else None,
                "first_sentence_p95_ms": percentile(sentence, 95) if sentence else None,
                "dialogue_tokens_per_s": statistics.median(rates) if rates else None,
            }
        return out


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident memory (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def measure_runtime(base_url: str, model: str, *, max_tokens: int = 96,
                          rounds: int = 2) -> dict[str, float]:
    """Prompt and generation speed from llama.cpp's `timings`, and time to the first
    streamed token, over RUNTIME_PROMPTS (`rounds` times, the first round a warm-up)."""
    prompt_rates: list[float] = []
    gen_rates: list[float] = []
    first_token: list[float] = []
    # A fresh connection per request: llama.cpp's server closes idle keep-alive connections,
    # and a request racing that close fails with "server disconnected".
    async with httpx.AsyncClient(base_url=base_url, timeout=300,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for round_no in range(rounds):
            for prompt in RUNTIME_PROMPTS:
                # A prefix unique to the round keeps the prompt cache from hiding prompt work.
                body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": f"[{round_no}] {prompt}"}]}
                started = time.perf_counter()
                first: float | None = None
                async with client.stream("POST", "/chat/completions",
                                         json=body | {"stream": True, "timings_per_token": False}
                                         ) as resp:
                    resp.raise_for_status()
                    timings: dict[str, float] = {}
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        delta = (chunk.get("choices") or [{}])[0].get("delta", {})
                        if first is None and delta.get("content"):
                            first = time.perf_counter()
                        timings = chunk.get("timings") or timings
                if round_no == 0:
                    continue
                if first is not None:
                    first_token.append((first - started) * 1000)
                if timings:
                    prompt_rates.append(float(timings["prompt_per_second"]))
                    gen_rates.append(float(timings["predicted_per_second"]))
    out: dict[str, float] = {}
    if prompt_rates:
        out["prompt_tokens_per_s"] = statistics.median(prompt_rates)
        out["tokens_per_s"] = statistics.median(gen_rates)
    if first_token:
        out["first_token_ms"] = statistics.median(first_token)
    return out


async def run_eval(base_url: str, model: str, questions: list[Question]) -> list[Answer]:
    """Every question through the real dialogue and tools actors, each in a session of its own."""
    suffix = new_id().lower()

    class EvalDialogue(Dialogue):  # durables of their own: a deployment's actors stay put
        name: ClassVar[str] = f"eval_dialogue_{suffix}"

    class EvalTools(Tools):
        name: ClassVar[str] = f"eval_tools_{suffix}"

    answers: list[Answer] = []
    config = Config()  # the default settings, whatever ./vagent.toml says
    config.llm.providers = [local_provider(base_url, model)]  # the dialogue's offline provider
    async with bench_nats(None) as (bus, _):
        host = ActorHost(bus, [EvalDialogue, EvalTools], config)
        await host.start()
        try:
            for question in questions:
                session = f"eval-{new_id()}"
                asked_at = datetime.now().astimezone()
                try:
                    for earlier in question.before:
                        await _turn(bus, session, earlier)
                    asked_at = datetime.now().astimezone()
                    answer = await _turn(bus, session, question.ask)
                except TimeoutError:  # no answer in time scores as a wrong one
                    answer = Answer(id="", category="", ask=question.ask, answer="", asked_at="",
                                    first_delta_ms=None, first_sentence_ms=None, tokens_per_s=None)
                answer.id, answer.category = question.id, question.category
                answer.asked_at = asked_at.isoformat()
                answer.passed = score(question, answer.answer, asked_at)
                answers.append(answer)
        finally:
            await host.stop()
    return answers


async def _turn(bus: Bus, session: str, text: str) -> Answer:
    question = UserText(session_id=session, text=text)
    seen: dict[str, float] = {}
    done: asyncio.Future[AssistantMessage] = asyncio.get_running_loop().create_future()

    async def on_message(msg: Message) -> None:
        now = time.perf_counter()
        try:
            event = decode(msg.data)
        except DecodeError:
            return
        if getattr(event, "turn_id", None) != question.id:
            return
        seen.setdefault(event.type, now)
        # A step that calls tools is not the answer: the turn's last message is.
        if isinstance(event, AssistantMessage) and not event.tool_calls and not done.done():
            done.set_result(event)

    sub = await bus.subscribe(session_all(session), on_message)
    await bus.flush()
    started = time.perf_counter()
    await bus.publish(question)
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S):
            final = await done
    finally:
        await sub.stop()
    generation_s = ((final.total_ms or 0) - (final.ttft_ms or 0)) / 1000

    def since(kind: str) -> float | None:
        return (seen[kind] - started) * 1000 if kind in seen else None

    return Answer(id="", category="", ask=text, answer=final.text, asked_at="",
                  first_delta_ms=since("assistant.delta"), first_sentence_ms=since("assistant.sentence"),
                  tokens_per_s=(final.usage.completion_tokens / generation_s
                                if final.usage and generation_s > 0 else None))


async def bench_local_llm(models: list[str], *, base_url: str | None = None, served_name: str = "local",
                          pid: int | None = None, run_eval_set: bool = True,
                          threads: int = 2) -> list[Candidate]:
    from actors.dialogue.local_llm import LocalLLMServer
    from settings.paths import data_dir

    questions = load_eval_set() if run_eval_set else []
    results: list[Candidate] = []
    if base_url is not None:
        candidate = Candidate(label=f"{served_name} @ {base_url}")
        candidate.runtime = await measure_runtime(base_url, served_name)
        if questions:
            candidate.answers = await run_eval(base_url, served_name, questions)
        if pid is not None and (rss := peak_rss_mib(pid)) is not None:
            candidate.runtime["peak_rss_mib"] = rss
        return [candidate]
    for name in models:
        server = LocalLLMServer(name, data_dir(), threads=threads)
        url = await asyncio.to_thread(server.start)
        try:
            candidate = Candidate(label=name)
            candidate.runtime = await measure_runtime(url, server.model_name)
            if questions:
                candidate.answers = await run_eval(url, server.model_name, questions)
            if server.proc is not None and (rss := peak_rss_mib(server.proc.pid)) is not None:
                candidate.runtime["peak_rss_mib"] = rss
        finally:
            await asyncio.to_thread(server.stop)
        results.append(candidate)
    return results


def _fmt(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(candidates: list[Candidate], *, answers_file: Path | None = None) -> None:
    print(f"vagent bench local-llm   ({os.cpu_count()} cores; first sentence goal "
          f"≤ {FIRST_SENTENCE_GOAL_MS:g} ms p50)")
    header = (f"  {'model':<28} {'score':>6} {'1st delta p50/p95':>18} {'1st sentence p50/p95':>21} "
              f"{'gen tok/s':>9} {'prompt tok/s':>12} {'1st token':>9} {'peak RSS':>9}")
    print(header)
    for c in candidates:
        s = c.summary()
        score_text = f"{s['score']}/{s['questions']}" if "score" in s else "-"
        print(f"  {c.label:<28} {score_text:>6} "
              f"{_fmt(s.get('first_delta_p50_ms')):>8}/{_fmt(s.get('first_delta_p95_ms')):<6} ms "
              f"{_fmt(s.get('first_sentence_p50_ms')):>10}/{_fmt(s.get('first_sentence_p95_ms')):<6} ms "
              f"{_fmt(s.get('tokens_per_s'), 1):>9} {_fmt(s.get('prompt_tokens_per_s'), 1):>12} "
              f"{_fmt(s.get('first_token_ms')):>6} ms {_fmt(s.get('peak_rss_mib')):>5} MiB")
    for c in candidates:
        failed = [a for a in c.answers if not a.passed]
        if failed:
            print(f"  {c.label} missed: " + ", ".join(a.id for a in failed))
    if answers_file is not None:
        answers_file.write_text(json.dumps(
            {c.label: [a.__dict__ for a in c.answers] for c in candidates}, ensure_ascii=False, indent=1))
        print(f"  answers written to {answers_file}")
