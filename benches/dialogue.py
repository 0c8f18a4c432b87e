"""`vagent bench dialogue`: what vagent adds to an LLM turn, and the local model's speed.

From `user.text` published to the first `assistant.delta` and the first
`assistant.sentence` seen on the bus. With the instant echo provider the figures
are vagent's own overhead (history load, catalog, SDK, events); with `--local`
they include the local model, and tokens/s is reported too.

`--telemetry` times the same turns with telemetry off, with metrics on, and with metrics
and tracing on (spans exported over OTLP/HTTP to a receiver in another process), in
alternating blocks of one run so that the machine's drift falls on all three alike.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
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
from telemetry import metrics, tracing

OVERHEAD_GOAL_P95_MS = 5.0
WARM_UP = 3  # turns before the timed ones
TELEMETRY_GOAL_P50_MS = 0.3  # what metrics and tracing may add to the first delta's median
# (name, metrics on, tracing on)
TELEMETRY_MODES = (("off", False, False), ("metrics", True, False),
                   ("metrics + tracing", True, True))


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


async def bench_telemetry(url: str | None, *, turns: int = 200) -> dict[str, Any]:
    """`turns` timed turns in each telemetry mode, the modes taking turns one after the
    other (their order rotated every round) on one actor host, so that a shared machine's
    changing load falls on all three alike."""
    echo, base_url = await asyncio.to_thread(_start_echo)
    sink, sink_url = await asyncio.to_thread(_start_sink)
    configs = []
    for _, metrics_on, traced in TELEMETRY_MODES:
        config = Config()  # the default settings, whatever ./vagent.toml says
        config.llm.providers = [openai_provider(base_url)]
        config.telemetry.metrics = metrics_on
        config.telemetry.otlp_endpoint = sink_url if traced else ""
        configs.append(config)
    n = len(TELEMETRY_MODES)

    def mode_of(turn: int) -> int:
        return (turn + turn // n) % n  # each round of n turns in a rotated order

    async def switch(turn: int) -> None:
        """Into the mode of `turn`, once the previous turn's handler returned (its span ended
        in the mode it began in). Tracing is paused and resumed, not set up again: its
        exporter batches spans across turns, as it does in service."""
        async with asyncio.timeout(30):
            while host.runners[0].handled < turn:
                await asyncio.sleep(0.001)
        metrics.configure(configs[mode_of(turn)])
        tracing.pause(not configs[mode_of(turn)].telemetry.otlp_endpoint)

    class BenchDialogue(Dialogue):  # a durable of its own: a deployment's dialogue stays put
        name: ClassVar[str] = f"bench_dialogue_{new_id()}"

    try:
        async with bench_nats(url) as (bus, _):
            host = ActorHost(bus, [BenchDialogue], configs[0])
            tracing.setup(sink_url, "vagent-bench")
            await host.start()
            try:
                rows = await _turns(bus, turns * n, False, switch)
            finally:
                await host.stop()
                await delete_consumer(bus, "SESSIONS", BenchDialogue.name)
                metrics.configure(Config())
                await asyncio.to_thread(tracing.shutdown)  # exports the last spans
        spans = int(await asyncio.to_thread(_read, f"{sink_url}/count"))
    finally:
        for proc in (echo, sink):
            proc.terminate()
            proc.wait()
    by_mode: list[list[dict[str, float]]] = [[] for _ in TELEMETRY_MODES]
    for turn, row in enumerate(rows, start=WARM_UP):
        by_mode[mode_of(turn)].append(row)
    base = sorted(r["delta_ms"] for r in by_mode[0])
    modes: list[dict[str, Any]] = []
    for (name, metrics_on, traced), mine in zip(TELEMETRY_MODES, by_mode, strict=True):
        delta = sorted(r["delta_ms"] for r in mine)
        p50, p95 = percentile(delta, 50), percentile(delta, 95)
        # Each of this mode's turns against the "off" turn of its round: the median of these
        # differences is what drift between rounds cannot move.
        paired = [a["delta_ms"] - b["delta_ms"] for a, b in zip(mine, by_mode[0], strict=False)]
        modes.append({"mode": name, "metrics": metrics_on, "tracing": traced, "turns": len(delta),
                      "first_delta_p50_ms": p50, "first_delta_p95_ms": p95,
                      "added_p50_ms": p50 - percentile(base, 50),
                      "added_p95_ms": p95 - percentile(base, 95),
                      "added_paired_ms": statistics.median(paired),
                      # The process's CPU while the turn ran, its threads included; the
                      # exporter's batches (every 5 s) fall on the turns of every mode.
                      "cpu_per_turn_ms": statistics.median(r["cpu_ms"] for r in mine)})
    return {"provider": "echo (instant)", "cores": os.cpu_count() or 0, "modes": modes,
            "spans_exported": spans}


def print_telemetry_report(results: dict[str, Any]) -> None:
    print("vagent bench dialogue --telemetry")
    print(f"  provider              {results['provider']}")
    print(f"  cores                 {results['cores']}; the modes take turns, one after the other")
    print("  user.text → first delta   p50        p95        added p50  added p95  paired  "
          "CPU a turn")
    for mode in results["modes"]:
        print(f"  {mode['mode']:<18} {mode['first_delta_p50_ms']:7.2f} ms "
              f"{mode['first_delta_p95_ms']:7.2f} ms  {mode['added_p50_ms']:+7.2f} ms "
              f"{mode['added_p95_ms']:+7.2f} ms {mode['added_paired_ms']:+6.2f} ms "
              f"{mode['cpu_per_turn_ms']:6.2f} ms")
    print(f"  turns per mode        {results['modes'][0]['turns']}; spans exported over OTLP/HTTP: "
          f"{results['spans_exported']}")
    worst = max(mode["added_paired_ms"] for mode in results["modes"])
    verdict = "PASS" if worst <= TELEMETRY_GOAL_P50_MS else "MISS"
    print(f"  goal: telemetry adds ≤ {TELEMETRY_GOAL_P50_MS:g} ms to p50 (paired)   {verdict} "
          f"({worst:+.2f} ms at most)")


def _start_sink() -> tuple[subprocess.Popen[bytes], str]:
    """An OTLP/HTTP receiver in a process of its own (`benches.otlp_sink`)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benches.otlp_sink", str(port)],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the OTLP receiver did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def _start_echo(first_token_delay: float = 0.0) -> tuple[subprocess.Popen[bytes], str]:
    """The echo provider in a process of its own, so it does not share this one's GIL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "echo-llm", "--port", str(port),
                             "--token-delay", "0", "--first-token-delay", str(first_token_delay)],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the echo provider did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/v1"


async def _turns(bus: Bus, turns: int, conversation: bool,
                 before: Callable[[int], Awaitable[None]] | None = None) -> list[dict[str, float]]:
    """Each turn in a fresh session (the same small history every turn), or all of them in
    one conversation whose history grows turn by turn. `before(n)` is called before the
    n-th turn (warm-up turns included), outside the time and CPU counted."""
    rows = []
    session = f"bench-{new_id()}"
    for n in range(turns + WARM_UP):  # the warm-up turns are not counted
        if before is not None:
            await before(n)
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
        cpu = time.process_time()
        started = time.perf_counter()
        # As the edge publishes a typed turn: the trace begins there when tracing is on.
        with tracing.span("edge user.text", None, role="edge") as span:
            await bus.publish(question, traceparent=tracing.traceparent(span) if span else None)
        final = await asyncio.wait_for(done, 120)
        cpu = time.process_time() - cpu
        await sub.stop()
        if "assistant.delta" not in seen or "assistant.sentence" not in seen or final.interrupted:
            raise RuntimeError(f"the turn produced no delta or sentence: {final}")
        generation_s = ((final.total_ms or 0) - (final.ttft_ms or 0)) / 1000
        rows.append({
            "delta_ms": (seen["assistant.delta"] - started) * 1000,
            "sentence_ms": (seen["assistant.sentence"] - started) * 1000,
            "tokens_per_s": final.usage.completion_tokens / generation_s if generation_s > 0 else 0,
            "cpu_ms": cpu * 1000,
        })
    return rows[WARM_UP:]


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
