"""`vagent bench dialogue`: what vagent adds to an LLM turn, and the local model's speed.

From `user.text` published to the first `assistant.delta` and the first
`assistant.sentence` seen on the bus. With the instant echo provider the figures
are vagent's own overhead (history load, catalog, SDK, events); with `--local`
they include the local model, and tokens/s is reported too.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any, ClassVar

from actors.dialogue.actor import Dialogue
from actors.runtime import ActorHost
from benches.common import bench_nats, percentile
from bus.admin import delete_consumer
from bus.client import Bus, Message
from bus.server import free_port, port_open
from bus.subjects import session_all
from schemas import AssistantMessage, DecodeError, UserText, decode, new_id
from settings import config as settings
from settings.config import Config
from settings.llm import openai_provider

OVERHEAD_GOAL_P95_MS = 5.0


async def bench_dialogue(url: str | None, *, turns: int = 200, local: bool = False,
                         local_model: str | None = None,
                         conversation: bool = False) -> dict[str, Any]:
    if turns < 1:
        raise ValueError("turns must be at least 1")
    echo: subprocess.Popen[bytes] | None = None
    llm: Any = None
    model = local_model or settings.load().llm.local_model
    try:
        if local:
            from actors.dialogue.local_llm import LocalLLMServer
            from settings.paths import data_dir

            llm = LocalLLMServer(model, data_dir())
            base_url = await asyncio.to_thread(llm.start)
        else:
            echo, base_url = await asyncio.to_thread(_start_echo)
        config = Config()  # the default settings, whatever ./vagent.toml says
        config.llm.providers = [openai_provider(base_url)]

        class BenchDialogue(Dialogue):  # a durable of its own: a deployment's dialogue stays put
            name: ClassVar[str] = f"bench_dialogue_{new_id()}"

        async with bench_nats(url) as (bus, _):
            host = ActorHost(bus, [BenchDialogue], config)
            await host.start()
            try:
                rows = await _turns(bus, turns if not local else min(turns, 20), conversation)
            finally:
                await host.stop()
                await delete_consumer(bus, "SESSIONS", BenchDialogue.name)
    finally:
        if echo:
            echo.terminate()
            echo.wait()
        if llm:
            await asyncio.to_thread(llm.stop)
    delta = sorted(r["delta_ms"] for r in rows)
    sentence = sorted(r["sentence_ms"] for r in rows)
    results: dict[str, Any] = {
        "provider": f"local {model}" if local else "echo (instant)",
        "sessions": "one conversation" if conversation else "a fresh session a turn",
        "turns": len(rows), "cores": os.cpu_count() or 0,
        "first_delta_p50_ms": percentile(delta, 50), "first_delta_p95_ms": percentile(delta, 95),
        "first_sentence_p50_ms": percentile(sentence, 50),
        "first_sentence_p95_ms": percentile(sentence, 95),
    }
    rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    if local and rates:
        results["tokens_per_s"] = statistics.median(rates)
    return results


def _start_echo() -> tuple[subprocess.Popen[bytes], str]:
    """The echo provider in a process of its own, so it does not share this one's GIL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "echo-llm", "--port", str(port),
                             "--token-delay", "0"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the echo provider did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/v1"


async def _turns(bus: Bus, turns: int, conversation: bool) -> list[dict[str, float]]:
    """Each turn in a fresh session (the same small history every turn), or all of them in
    one conversation whose history grows turn by turn."""
    rows = []
    session = f"bench-{new_id()}"
    for _ in range(turns + 3):  # three warm-up turns, not counted
        if not conversation:
            session = f"bench-{new_id()}"
        question = UserText(session_id=session, text="Say hello to the benchmark, in one sentence.")
        seen: dict[str, float] = {}
        done: asyncio.Future[AssistantMessage] = asyncio.get_running_loop().create_future()

        async def on_message(msg: Message, seen: dict[str, float] = seen,
                             done: asyncio.Future[AssistantMessage] = done,
                             turn: str = question.id) -> None:
            now = time.perf_counter()
            try:
                event = decode(msg.data)
            except DecodeError:
                return
            if getattr(event, "turn_id", None) != turn:
                return  # the previous turn's late events, in a conversation
            seen.setdefault(event.type, now)
            if isinstance(event, AssistantMessage) and not done.done():
                done.set_result(event)

        sub = await bus.subscribe(session_all(session), on_message)
        await bus.flush()
        started = time.perf_counter()
        await bus.publish(question)
        final = await asyncio.wait_for(done, 120)
        await sub.stop()
        if "assistant.delta" not in seen or "assistant.sentence" not in seen or final.interrupted:
            raise RuntimeError(f"the turn produced no delta or sentence: {final}")
        generation_s = ((final.total_ms or 0) - (final.ttft_ms or 0)) / 1000
        rows.append({
            "delta_ms": (seen["assistant.delta"] - started) * 1000,
            "sentence_ms": (seen["assistant.sentence"] - started) * 1000,
            "tokens_per_s": final.usage.completion_tokens / generation_s if generation_s > 0 else 0,
        })
    return rows[3:]


def print_report(results: dict[str, Any]) -> None:
    print("vagent bench dialogue")
    print(f"  provider              {results['provider']}")
    print(f"  cores / turns         {results['cores']} / {results['turns']}")
    print(f"  sessions              {results['sessions']}")
    print(f"  user.text → first delta      p50 {results['first_delta_p50_ms']:8.2f} ms   "
          f"p95 {results['first_delta_p95_ms']:8.2f} ms")
    print(f"  user.text → first sentence   p50 {results['first_sentence_p50_ms']:8.2f} ms   "
          f"p95 {results['first_sentence_p95_ms']:8.2f} ms")
    if "tokens_per_s" in results:
        print(f"  generation            {results['tokens_per_s']:.1f} tokens/s (median)")
    else:
        p95 = results["first_delta_p95_ms"]
        verdict = "PASS" if p95 <= OVERHEAD_GOAL_P95_MS else "MISS"
        print(f"  goal: overhead ≤ {OVERHEAD_GOAL_P95_MS:g} ms p95 to first delta   "
              f"{verdict} ({p95:.2f} ms)")
