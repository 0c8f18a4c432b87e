"""`vagent bench edge`: N voice sessions talking to one edge at once.

The server side (the edge with the ASR, dialogue and TTS actors, over an embedded temporary
NATS unless `--nats`) runs in a child process of its own, so its CPU time and memory are
measured apart from the load generator.

Providers:
- `local` (default): the offline speech models (moonshine, Piper) and the instant echo LLM
  in a process of its own: vagent's cost plus the speech models'.
- `cloud`: the Deepgram, ElevenLabs and OpenAI-compatible stand-ins (`devservers/`), each in
  a process of its own, spoken to through the real SDKs, with fixed delays of a cloud's own:
  the final transcript `CLOUD_DELAYS["transcript_ms"]` after the end of the stream, the first
  token after `first_token_ms`, the first audio after `first_audio_ms`. What is left of the
  latency over their sum, and the server's CPU and memory, is vagent's own cost.

Each simulated client connects (a xiaozhi device on `/xiaozhi/v1/`, protocol v3, or a `/ws`
client with `?audio=opus`), starts listening, streams silence at real time for `listen_s`
(everybody at once: the cost of a listening session), then a spoken question (synthesized
once with the bundled Piper voice, Opus 16 kHz / 60 ms, as firmware sends it) — or, with
`--no-asr`, types it — and waits for the answer's last audio. Reported per run: connections
held, p50/p95 from the end of speech (or the text sent) to the first downlink audio frame
and what that adds over the stand-ins' delays, the server process's CPU per listening
session (% of a core) and per turn, and its resident memory per session.

With more sessions than the ASR workers take (`[asr] max_sessions`, `--max-sessions`), the
others wait (`session.queued`) and, as nobody leaves before everyone is answered, are refused
(`busy`) after `[asr] max_queue_ms`: the report says how many were admitted, waited (seen on
`/ws` only: xiaozhi has no message for it) and were refused, and the latency is the admitted
ones'.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import websockets

from benches.common import percentile

QUESTION = "What time is it?"
LEAD_SILENCE_MS = 600  # before the question: a device starts streaming before one speaks
TAIL_SILENCE_MS = 1500  # after it: the VAD needs silence to end the utterance
FRAME_S = 0.06  # one Opus packet
STAGGER_S = 0.05  # between two clients' first words: nobody speaks on the same frame
CLOUD_DELAYS = {"transcript_ms": 150, "first_token_ms": 200, "first_audio_ms": 100}
CLOUD_KEY = "bench-key"
Providers = Literal["local", "cloud"]
Transport = Literal["xiaozhi", "ws"]
RESULT_KEYS = ("sessions", "held", "answered", "admitted", "queued", "refused", "input",
               "providers", "transport",
               "first_audio_p50_ms", "first_audio_p95_ms", "added_p50_ms", "added_p95_ms",
               "listening_core_pct", "cpu_s_per_turn", "server_cpu_s", "cpu_s_per_session",
               "rss_idle_mib", "rss_peak_mib", "rss_mib_per_session", "cores")


# --- the server side (child process) ---------------------------------------------------------


async def serve(url: str | None, asr: bool, data_dir: Path, cloud: dict[str, str] | None,
                max_sessions: int = 0) -> None:
    """The edge and the actors, until stdin closes. Prints `READY <port>`. `cloud`: the
    stand-ins' URLs (`llm`, `deepgram`, `elevenlabs`); None: the local models."""
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

    echo, base_url = await asyncio.to_thread(_start_echo) if cloud is None else (None, cloud["llm"])
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
    config.asr.max_sessions = max_sessions
    if cloud is not None:
        config.asr.engine = "deepgram"
        config.asr.deepgram.url = cloud["deepgram"]
        config.tts.provider = "elevenlabs"
        config.tts.elevenlabs.url = cloud["elevenlabs"]
        config.tts.parallel = 64  # a cloud voice speaks for many sessions at once
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
        if echo is not None:
            echo.terminate()
            echo.wait()


# --- the cloud stand-ins (processes of their own) ----------------------------------------------


@contextlib.contextmanager
def cloud_stand_ins() -> Iterator[dict[str, str]]:
    """The Deepgram, ElevenLabs and OpenAI-compatible stand-ins with CLOUD_DELAYS, each in a
    process of its own (their work is the cloud's, not vagent's); their URLs."""
    from benches.dialogue import _start_echo

    procs: list[subprocess.Popen[bytes]] = []
    try:
        echo, llm = _start_echo(CLOUD_DELAYS["first_token_ms"] / 1000)
        procs.append(echo)
        deepgram = _ready([sys.executable, "-m", "devservers.deepgram", "--port", "0",
                           "--key", CLOUD_KEY, "--text", QUESTION,
                           "--final-delay", str(CLOUD_DELAYS["transcript_ms"] / 1000)], procs)
        elevenlabs = _ready([sys.executable, "-m", "devservers.elevenlabs", "--key", CLOUD_KEY,
                             "--first-audio-delay", str(CLOUD_DELAYS["first_audio_ms"] / 1000)],
                            procs)
        yield {"llm": llm, "deepgram": f"ws://127.0.0.1:{deepgram}",
               "elevenlabs": f"http://127.0.0.1:{elevenlabs}"}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(cmd: list[str], procs: list[subprocess.Popen[bytes]]) -> int:
    """Start a stand-in that prints `READY <port>`; its port."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"READY "):
        raise RuntimeError(f"{cmd[2]} did not start: {line!r}")
    return int(line.split()[1])


# --- the clients (this process) ---------------------------------------------------------------


async def question_audio() -> tuple[list[bytes], list[bytes], int]:
    """Silence and the question as a device streams them (Opus 16 kHz / 60 ms): a packet of
    silence, the question's packets, and where its speech ends (ms from its first packet)."""
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
    quiet = AudioEncoder(AudioParams(format="opus", sample_rate=16000, frame_duration=60))
    silence = quiet.encode(bytes(rate * 2 * 600 // 1000), rate)
    return silence, packets, LEAD_SILENCE_MS + speech_ms


class Gate:
    """Clients hold their connections until every one has its answer (or failed)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.connected = 0
        self.all_in = asyncio.Event()
        self.all_connected = asyncio.Event()
        self.release = asyncio.Event()

    def connect(self) -> None:
        self.connected += 1
        if self.connected >= self.expected:
            self.all_connected.set()

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_in.set()


class Client:
    """One transport's way to open a session, start listening, send audio or text, and tell
    the answer's audio and its end."""

    def __init__(self, base: str, transport: Transport, n: int) -> None:
        self.transport = transport
        self.n = n
        if transport == "xiaozhi":
            self.url = f"{base}/xiaozhi/v1/"
            self.headers = {"Protocol-Version": "3", "Client-Id": f"bench-{n}",
                            "Device-Id": f"be:nc:00:00:{n // 256:02x}:{n % 256:02x}"}
        else:
            self.url, self.headers = f"{base}/ws?audio=opus&echo_cancelled=true", {}
        self.session_id = ""

    async def open(self, ws: Any) -> None:
        if self.transport == "ws":
            self.session_id = json.loads(await asyncio.wait_for(ws.recv(), 30))["session_id"]
            return
        await ws.send(json.dumps({
            "type": "hello", "version": 3, "features": {"mcp": False}, "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1,
                             "frame_duration": 60}}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if hello.get("type") != "hello":
            raise RuntimeError(f"no hello: {hello}")
        self.session_id = hello["session_id"]

    async def listen(self, ws: Any) -> None:
        if self.transport == "ws":
            await ws.send(json.dumps({"type": "listen.start", "mode": "auto"}))
        else:
            await ws.send(json.dumps({"session_id": self.session_id, "type": "listen",
                                      "state": "start", "mode": "auto"}))

    async def audio(self, ws: Any, packet: bytes) -> None:
        from edge.xiaozhi.framing import pack

        await ws.send(pack(3, packet) if self.transport == "xiaozhi" else packet)

    async def text(self, ws: Any, text: str) -> None:
        if self.transport == "ws":
            await ws.send(json.dumps({"type": "user.text", "text": text}))
        else:
            await ws.send(json.dumps({"session_id": self.session_id, "type": "listen",
                                      "state": "detect", "text": text}))

    def refused(self, message: dict[str, Any]) -> bool:
        """No ASR worker had room for the session: it is told so, then closed."""
        if self.transport == "ws":
            return message.get("type") == "session.refused"
        return message.get("type") == "alert" and "busy" in message.get("message", "")

    def ended(self, message: dict[str, Any]) -> bool:
        """The answer's audio is over."""
        if self.transport == "ws":
            return message.get("type") == "tts.stopped"
        return message.get("type") == "tts" and message.get("state") == "stop"


async def device(base: str, transport: Transport, n: int, audio: tuple[list[bytes], list[bytes], int],
                 asr: bool, gate: Gate, speak_at: float) -> dict[str, Any]:
    """One client's turn: listening (silence) until `speak_at`, then the question; its
    latency, whether it was answered and held to the end."""
    silence, packets, speech_end_ms = audio
    row: dict[str, Any] = {"held": False, "answered": False, "latency_ms": None, "error": None,
                           "queued": False, "refused": False}
    arrived = connected = False
    client = Client(base, transport, n)
    try:
        async with websockets.connect(client.url, additional_headers=client.headers,
                                      max_size=None, open_timeout=60) as ws:
            await client.open(ws)
            first_audio: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            stopped = asyncio.Event()

            async def receive() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):  # a refusal closes it
                    async for data in ws:
                        if isinstance(data, bytes):
                            if not first_audio.done():
                                first_audio.set_result(time.perf_counter())
                            continue
                        message = json.loads(data)
                        if client.ended(message):
                            stopped.set()
                        row["queued"] |= message.get("type") == "session.queued"
                        row["refused"] |= client.refused(message)
                if not first_audio.done():  # closed before any answer: nothing will come
                    first_audio.set_exception(ConnectionError("closed by the server"))
                    first_audio.exception()  # a refused client may never await it: no warning

            reader = asyncio.create_task(receive())
            gate.connect()
            connected = True
            if asr:
                await client.listen(ws)
                start = time.perf_counter()
                i = 0
                while time.perf_counter() < speak_at:  # listening: silence at real time
                    await client.audio(ws, silence[i % len(silence)])
                    i += 1
                    await asyncio.sleep(max(0.0, start + i * FRAME_S - time.perf_counter()))
                start = time.perf_counter()
                for i, packet in enumerate(packets):
                    delay = start + i * FRAME_S - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await client.audio(ws, packet)
                    if first_audio.done():
                        break  # answered: a device stops streaming when the answer plays
                said = start + speech_end_ms / 1000
            else:
                await asyncio.sleep(max(0.0, speak_at - time.perf_counter()))
                said = time.perf_counter()
                await client.text(ws, f"{QUESTION[:-1]} in room {n}?")  # one answer each
            heard = await asyncio.wait_for(first_audio, 120)
            row["latency_ms"] = (heard - said) * 1000
            await asyncio.wait_for(stopped.wait(), 120)
            row["answered"] = True
            arrived = True
            gate.arrive()
            await gate.release.wait()  # every client stays connected until all are done
            row["held"] = ws.state == websockets.State.OPEN and not reader.done()
            reader.cancel()
    except Exception as exc:
        if not row["refused"]:  # a refused session's end is its outcome, not an error
            row["error"] = f"{type(exc).__name__}: {exc}"
    if not connected:
        gate.connect()
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


async def bench_edge(url: str | None, *, sessions: int = 10, asr: bool = True,
                     providers: Providers = "local", transport: Transport = "xiaozhi",
                     listen_s: float = 5.0, max_sessions: int = 0) -> dict[str, Any]:
    if sessions < 1:
        raise ValueError("sessions must be at least 1")
    with contextlib.ExitStack() as stands:
        cloud = stands.enter_context(cloud_stand_ins()) if providers == "cloud" else None
        return await _bench(url, sessions, asr, cloud, transport, listen_s, max_sessions)


async def _bench(url: str | None, sessions: int, asr: bool, cloud: dict[str, str] | None,
                 transport: Transport, listen_s: float, max_sessions: int) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vagent-bench-edge-") as tmp:
        cmd = [sys.executable, "-m", "benches.edge", "serve", "--data-dir", tmp]
        cmd += ["--nats", url] if url else []
        cmd += [] if asr else ["--no-asr"]
        cmd += ["--cloud", json.dumps(cloud)] if cloud else []
        cmd += ["--max-sessions", str(max_sessions)]
        # Every device asks the same: a warm cache would speak every answer but the first from
        # memory. Off, unless asked for: each session pays for its own synthesis.
        env = {**os.environ, "VAGENT_TTS_CACHE_MB": os.environ.get("VAGENT_TTS_CACHE_MB", "0")}
        if cloud:
            env |= {"DEEPGRAM_API_KEY": CLOUD_KEY, "ELEVENLABS_API_KEY": CLOUD_KEY}
        server = _spawn(cmd, env)
        try:
            assert server.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 180)
            if not line.startswith(b"READY "):
                raise RuntimeError(f"the server side did not start: {line!r}")
            base = f"ws://127.0.0.1:{int(line.split()[1])}"
            audio = await question_audio() if asr else ([], [], 0)
            # One warm-up turn (first-use costs), then the idle baseline.
            warm_gate = Gate(1)
            warm_gate.release.set()
            warm = await device(base, transport, 0, audio, asr, warm_gate, time.perf_counter())
            if warm["error"]:
                raise RuntimeError(f"the warm-up turn failed: {warm['error']}")
            await asyncio.sleep(1.0)
            rss0 = rss_mib(server.pid)
            gate = Gate(sessions)
            peak = rss0
            # Everyone connects and listens; then they speak, STAGGER_S apart.
            connect_s = 5.0 + sessions * 0.02
            speak_at = time.perf_counter() + connect_s + listen_s
            tasks = [asyncio.create_task(device(base, transport, n, audio, asr, gate,
                                                speak_at + (n - 1) * STAGGER_S))
                     for n in range(1, sessions + 1)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.all_connected.wait(), connect_s)
            await asyncio.sleep(0.5)
            listening = (time.perf_counter(), cpu_seconds(server.pid))
            await asyncio.sleep(max(0.0, speak_at - 0.1 - time.perf_counter()))
            listened = (time.perf_counter(), cpu_seconds(server.pid))
            peak = rss_mib(server.pid)
            while not gate.all_in.is_set():
                peak = max(peak, rss_mib(server.pid))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gate.all_in.wait(), 0.2)
            peak = max(peak, rss_mib(server.pid))
            spoke = cpu_seconds(server.pid)
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
    listen_wall = listened[0] - listening[0]
    listen_cpu = listened[1] - listening[1]
    turn_cpu = spoke - listened[1]
    waited = sum(CLOUD_DELAYS.values()) if cloud and asr else (
        CLOUD_DELAYS["first_token_ms"] + CLOUD_DELAYS["first_audio_ms"] if cloud else 0)

    def at(q: float) -> float:
        return percentile(latencies, q) if latencies else float("nan")

    engines = ("ASR deepgram stand-in" if cloud else "ASR moonshine tiny-en") if asr else "no ASR"
    voice = "TTS elevenlabs stand-in" if cloud else "TTS piper"
    return {
        "sessions": sessions,
        "held": sum(1 for r in rows if r["held"]),
        "answered": sum(1 for r in rows if r["answered"]),
        "admitted": sum(1 for r in rows if not r["refused"]),
        "queued": sum(1 for r in rows if r["queued"]) if transport == "ws" else None,
        "refused": sum(1 for r in rows if r["refused"]),
        "providers": "cloud" if cloud else "local",
        "transport": transport,
        "input": (f"speech ({audio[2] - LEAD_SILENCE_MS} ms, Opus 16 kHz/60 ms at real time, "
                  f"{engines})" if asr else "typed text (no ASR)")
        + f"; {voice}, cache {os.environ.get('VAGENT_TTS_CACHE_MB', '0')} MB",
        "first_audio_p50_ms": at(50),
        "first_audio_p95_ms": at(95),
        "stand_in_delays_ms": waited,
        "added_p50_ms": at(50) - waited,
        "added_p95_ms": at(95) - waited,
        "listening_core_pct": 100 * listen_cpu / listen_wall / sessions if asr and listen_wall > 0
        else float("nan"),
        # Refused sessions take no turn.
        "cpu_s_per_turn": turn_cpu / max(1, sum(1 for r in rows if not r["refused"])),
        "server_cpu_s": listen_cpu + turn_cpu,
        "cpu_s_per_session": (listen_cpu + turn_cpu) / sessions,
        "rss_idle_mib": rss0,
        "rss_peak_mib": peak,
        "rss_mib_per_session": (peak - rss0) / sessions,
        "cores": os.cpu_count() or 0,
        "errors": errors[:5],
    }


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def print_report(r: dict[str, Any]) -> None:
    where = "xiaozhi WebSocket /xiaozhi/v1/, protocol v3" if r["transport"] == "xiaozhi" else "/ws, Opus"
    print(f"vagent bench edge  ({where}; {r['providers']} providers)")
    print(f"  sessions          {r['sessions']} concurrent, {r['held']} connections held, "
          f"{r['answered']} answered")
    if r["refused"] or r["queued"]:
        waited = f", {r['queued']} waited first" if r["queued"] is not None else ""
        print(f"  admission         {r['admitted']} admitted{waited}, {r['refused']} refused busy"
              "   (latency: the admitted sessions')")
    print(f"  input             {r['input']}")
    print(f"  first audio       p50 {r['first_audio_p50_ms']:.0f} ms   p95 {r['first_audio_p95_ms']:.0f} ms"
          "   (end of speech or text sent → first downlink audio frame)")
    if r["stand_in_delays_ms"]:
        print(f"  added by vagent   p50 {r['added_p50_ms']:.0f} ms   p95 {r['added_p95_ms']:.0f} ms"
              f"   (over the stand-ins' {r['stand_in_delays_ms']} ms)")
    print(f"  server CPU        {r['server_cpu_s']:.2f} s   {r['cpu_s_per_session']:.2f} s per session"
          f"   ({r['cores']} cores)")
    print(f"  listening         {r['listening_core_pct']:.2f} % of a core per session;"
          f"   a turn {r['cpu_s_per_turn']:.3f} s of CPU")
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
    s.add_argument("--cloud", help="the stand-ins' URLs, as JSON")
    s.add_argument("--max-sessions", type=int, default=0, help="[asr] max_sessions")
    args = parser.parse_args()
    from hosting.logs import setup

    setup(os.environ.get("VAGENT_LOG_LEVEL", "WARNING"))
    import uvloop

    cloud = json.loads(args.cloud) if args.cloud else None
    uvloop.run(serve(args.nats, not args.no_asr, args.data_dir, cloud, args.max_sessions))


if __name__ == "__main__":
    main()
