"""`vagent bench edge`: N xiaozhi devices talking to one edge at once.

The server side (the edge with the ASR, dialogue and TTS actors, over an embedded temporary
NATS unless `--nats`) runs in a child process of its own, so its CPU time and memory are
measured apart from the load generator; the LLM is the instant echo server (another
process), so the figures are vagent's own cost plus the speech models'.

Each simulated device connects to `/xiaozhi/v1/` (protocol v3), says hello, and streams a
spoken question (synthesized once with the bundled Piper voice, Opus 16 kHz / 60 ms, at
real time, as firmware does) — or, with `--no-asr`, types it with `listen detect` — and
waits for the answer's last audio frame (`tts stop`). Reported: connections held, p50/p95
from the end of speech (or the text sent) to the first downlink audio frame, and the
server process's CPU seconds and resident memory per session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import websockets

from benches.common import percentile

QUESTION = "What time is it?"
LEAD_SILENCE_MS = 600  # before the question: a device starts streaming before one speaks
TAIL_SILENCE_MS = 1500  # after it: the VAD needs silence to end the utterance
RESULT_KEYS = ("sessions", "held", "answered", "input", "first_audio_p50_ms", "first_audio_p95_ms",
               "server_cpu_s", "cpu_s_per_session", "rss_idle_mib", "rss_peak_mib",
               "rss_mib_per_session", "cores")


# --- the server side (child process) ---------------------------------------------------------


async def serve(url: str | None, asr: bool, data_dir: Path) -> None:
    """The edge and the actors, until stdin closes. Prints `READY <port>`."""
    from actors.asr.actor import Asr
    from actors.dialogue.actor import Dialogue
    from actors.runtime import ActorHost
    from actors.tts.actor import Tts
    from benches.common import bench_nats
    from benches.dialogue import _start_echo
    from bus.admin import delete_consumer
    from edge.server import EdgeServer
    from schemas import new_id
    from settings.config import Config
    from settings.llm import openai_provider

    echo, base_url = await asyncio.to_thread(_start_echo)
    # No read models here: the default assistant is all the bench talks to (said once).
    logging.getLogger("vagent.assistant").setLevel(logging.ERROR)
    run = new_id().lower()

    class BenchAsr(Asr):  # durables of their own: a deployment's actors stay put
        name: ClassVar[str] = f"bench_asr_{run}"

    class BenchDialogue(Dialogue):
        name: ClassVar[str] = f"bench_dialogue_{run}"

    class BenchTts(Tts):
        name: ClassVar[str] = f"bench_tts_{run}"

    actors: list[Any] = [BenchDialogue, BenchTts] + ([BenchAsr] if asr else [])
    config = Config()  # the default settings, whatever ./vagent.toml says
    config.llm.providers = [openai_provider(base_url)]
    config.edge.max_connections = 100_000
    config.edge.max_sessions_per_address = 100_000  # every simulated device is on loopback
    try:
        async with bench_nats(url) as (bus, _):
            host = ActorHost(bus, actors, config, data_dir)
            await host.start()
            edge = EdgeServer(bus, config, data_dir, host="127.0.0.1", port=0)
            await edge.start()
            try:
                print(f"READY {edge.port}", flush=True)
                await asyncio.to_thread(sys.stdin.read)  # until the bench closes it
            finally:
                await edge.stop()
                await host.stop()
                for actor in actors:
                    with contextlib.suppress(Exception):
                        await delete_consumer(bus, "SESSIONS", actor.name)
    finally:
        echo.terminate()
        echo.wait()


# --- the devices (this process) ----------------------------------------------------------------


async def question_audio() -> tuple[list[bytes], int]:
    """The question as a device would stream it (Opus 16 kHz / 60 ms), and where its speech
    ends (ms from the first frame)."""
    from actors.tts.providers import open_provider
    from audio.encode import AudioEncoder
    from schemas import AudioParams
    from settings.config import TtsSettings

    voice = await open_provider(TtsSettings(), "piper")
    try:
        speech = b"".join([chunk async for chunk in voice.stream(QUESTION)])
    finally:
        await voice.close()
    rate = voice.sample_rate
    speech_ms = len(speech) // 2 * 1000 // rate
    encoder = AudioEncoder(AudioParams(format="opus", sample_rate=16000, frame_duration=60))
    lead, tail = (bytes(rate * ms // 1000 * 2) for ms in (LEAD_SILENCE_MS, TAIL_SILENCE_MS))
    packets = encoder.encode(lead + speech + tail, rate)
    packets += encoder.end_segment()
    return packets, LEAD_SILENCE_MS + speech_ms


class Gate:
    """Devices hold their connections until every one has its answer (or failed)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_in = asyncio.Event()
        self.release = asyncio.Event()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_in.set()


async def device(url: str, n: int, packets: list[bytes], speech_end_ms: int, asr: bool,
                 gate: Gate) -> dict[str, Any]:
    """One device's turn; its latency, whether it was answered and held to the end."""
    from edge.xiaozhi.framing import pack

    row: dict[str, Any] = {"held": False, "answered": False, "latency_ms": None, "error": None}
    arrived = False
    headers = {"Protocol-Version": "3", "Device-Id": f"be:nc:00:00:{n // 256:02x}:{n % 256:02x}",
               "Client-Id": f"bench-{n}"}
    try:
        async with websockets.connect(url, additional_headers=headers, max_size=None,
                                      open_timeout=30) as ws:
            await ws.send(json.dumps({
                "type": "hello", "version": 3, "features": {"mcp": False}, "transport": "websocket",
                "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                                 "frame_duration": 60}}))
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if hello.get("type") != "hello":
                raise RuntimeError(f"no hello: {hello}")
            sid = hello["session_id"]
            first_audio: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            stopped = asyncio.Event()

            async def receive() -> None:
                async for data in ws:
                    if isinstance(data, bytes):
                        if not first_audio.done():
                            first_audio.set_result(time.perf_counter())
                    elif json.loads(data).get("type") == "tts" and json.loads(data).get("state") == "stop":
                        stopped.set()

            reader = asyncio.create_task(receive())
            if asr:
                await ws.send(json.dumps({"session_id": sid, "type": "listen", "state": "start",
                                          "mode": "auto"}))
                start = time.perf_counter()
                for i, packet in enumerate(packets):
                    delay = start + i * 0.06 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await ws.send(pack(3, packet))
                    if first_audio.done():
                        break  # answered: a device stops streaming when the answer plays
                said = start + speech_end_ms / 1000
            else:
                said = time.perf_counter()
                text = f"{QUESTION[:-1]} in room {n}?"  # one answer each: no shared synthesis
                await ws.send(json.dumps({"session_id": sid, "type": "listen", "state": "detect",
                                          "text": text}))
            heard = await asyncio.wait_for(first_audio, 120)
            row["latency_ms"] = (heard - said) * 1000
            await asyncio.wait_for(stopped.wait(), 120)
            row["answered"] = True
            arrived = True
            gate.arrive()
            await gate.release.wait()  # every device stays connected until all are done
            row["held"] = ws.state == websockets.State.OPEN and not reader.done()
            reader.cancel()
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    if not arrived:
        gate.arrive()
    return row


# --- measuring ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bench_edge(url: str | None, *, sessions: int = 10, asr: bool = True) -> dict[str, Any]:
    if sessions < 1:
        raise ValueError("sessions must be at least 1")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vagent-bench-edge-") as tmp:
        cmd = [sys.executable, "-m", "benches.edge", "serve", "--data-dir", tmp]
        cmd += ["--nats", url] if url else []
        cmd += [] if asr else ["--no-asr"]
        # Every device asks the same: a warm cache would speak every answer but the first from
        # memory. Off, unless asked for: each session pays for its own synthesis.
        server = _spawn(cmd, {**os.environ,
                              "VAGENT_TTS_CACHE_MB": os.environ.get("VAGENT_TTS_CACHE_MB", "0")})
        try:
            assert server.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 180)
            if not line.startswith(b"READY "):
                raise RuntimeError(f"the server side did not start: {line!r}")
            ws_url = f"ws://127.0.0.1:{int(line.split()[1])}/xiaozhi/v1/"
            packets, speech_end_ms = await question_audio() if asr else ([], 0)
            # One warm-up turn (first-use costs), then the idle baseline.
            warm_gate = Gate(1)
            warm_gate.release.set()
            warm = await device(ws_url, 0, packets, speech_end_ms, asr, warm_gate)
            if warm["error"]:
                raise RuntimeError(f"the warm-up turn failed: {warm['error']}")
            await asyncio.sleep(1.0)
            cpu0, rss0 = cpu_seconds(server.pid), rss_mib(server.pid)
            gate = Gate(sessions)
            peak = rss0

            async def staggered(n: int) -> dict[str, Any]:
                await asyncio.sleep(n * 0.05)  # devices do not all speak on the same frame
                return await device(ws_url, n, packets, speech_end_ms, asr, gate)

            tasks = [asyncio.create_task(staggered(n)) for n in range(1, sessions + 1)]
            while not gate.all_in.is_set():
                peak = max(peak, rss_mib(server.pid))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gate.all_in.wait(), 0.2)
            peak = max(peak, rss_mib(server.pid))
            cpu = cpu_seconds(server.pid) - cpu0
            gate.release.set()
            rows = await asyncio.gather(*tasks)
        finally:
            with contextlib.suppress(Exception):
                assert server.stdin is not None
                server.stdin.close()
            try:
                await asyncio.to_thread(server.wait, 30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    latencies = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None)
    errors = [r["error"] for r in rows if r["error"]]
    return {
        "sessions": sessions,
        "held": sum(1 for r in rows if r["held"]),
        "answered": sum(1 for r in rows if r["answered"]),
        "input": (f"speech ({speech_end_ms - LEAD_SILENCE_MS} ms, Opus 16 kHz/60 ms at real time, "
                  "ASR moonshine tiny-en)" if asr else "typed text (listen detect, no ASR)")
        + f"; TTS piper, cache {os.environ.get('VAGENT_TTS_CACHE_MB', '0')} MB",
        "first_audio_p50_ms": percentile(latencies, 50) if latencies else float("nan"),
        "first_audio_p95_ms": percentile(latencies, 95) if latencies else float("nan"),
        "server_cpu_s": cpu,
        "cpu_s_per_session": cpu / sessions,
        "rss_idle_mib": rss0,
        "rss_peak_mib": peak,
        "rss_mib_per_session": (peak - rss0) / sessions,
        "cores": os.cpu_count() or 0,
        "errors": errors[:5],
    }


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def print_report(r: dict[str, Any]) -> None:
    print("vagent bench edge  (xiaozhi WebSocket /xiaozhi/v1/, protocol v3)")
    print(f"  sessions          {r['sessions']} concurrent, {r['held']} connections held, "
          f"{r['answered']} answered")
    print(f"  input             {r['input']}")
    print(f"  first audio       p50 {r['first_audio_p50_ms']:.0f} ms   p95 {r['first_audio_p95_ms']:.0f} ms"
          "   (end of speech or text sent → first downlink audio frame)")
    print(f"  server CPU        {r['server_cpu_s']:.2f} s   {r['cpu_s_per_session']:.2f} s per session"
          f"   ({r['cores']} cores)")
    print(f"  server RSS        idle {r['rss_idle_mib']:.0f} MiB, peak {r['rss_peak_mib']:.0f} MiB,"
          f"   {r['rss_mib_per_session']:.1f} MiB per session")
    for error in r.get("errors") or []:
        print(f"  error             {error}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.edge")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="the server side of the bench (a child process)")
    s.add_argument("--nats")
    s.add_argument("--data-dir", type=Path, required=True)
    s.add_argument("--no-asr", action="store_true")
    args = parser.parse_args()
    from hosting.logs import setup

    setup(os.environ.get("VAGENT_LOG_LEVEL", "WARNING"))
    import uvloop

    uvloop.run(serve(args.nats, not args.no_asr, args.data_dir))


if __name__ == "__main__":
    main()
