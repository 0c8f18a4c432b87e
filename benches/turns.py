"""`vagent bench turns`: turn-taking on the committed labelled set (`benches.turns_set`).

Each item is played into a session of its own, at real time in 20 ms PCM16 frames, through
the real ASR actor over NATS (an embedded temporary server unless `--nats`), once per end-of-
turn detector (`[asr.turn] detector`: `silence`, then `smart_turn`), and everything the ASR
says about the session is recorded. For the items heard over the assistant, the bench plays
the TTS speaker's part: `tts.started`, the assistant's audio frame by frame on `audio.out`
(the echo canceller's reference, as the speaker sends it), held while the turn is paused
(`turn.paused` … `turn.resumed`), `tts.stopped` when it is done or interrupted. For the echo
items the microphone also hears what was played, delayed and quieter (the item's `echo`).

Figures per detector (the items' labels are where the user's speech is, in audio ms):

- false cut-offs: paused and trailing items whose turn ended before the speaker finished
  (a `speech.stopped` judged, at its `audio_ms` plus the silence heard, before the labelled
  end of speech: the sentence was split);
- end-of-turn delay after complete sentences: from the labelled end of speech to where the
  turn was judged over, in audio ms (`audio_ms` + `end.silence_ms` of `speech.stopped`), and
  in wall ms from sending the frame holding the end of speech to receiving `speech.stopped`;
- false interruptions by backchannels, coughs and the assistant's own echo: items with a
  `turn.interrupted` (a pause alone is counted, not charged);
- false-interruption resume rate: of the backchannel and cough items that paused or
  interrupted the assistant, the share it resumed (`turn.resumed`) without an interruption;
- barge-in stop latency: from the onset of a real request over the assistant to the first
  `turn.paused` or `turn.interrupted` after it (audio ms: where the stream was when the event
  came; a turn the echo paused or interrupted before the request is counted apart);
- the turn model's CPU per decision, timed in this process on the set's utterances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from benches.common import bench_nats, percentile
from benches.speech_set import RATE
from benches.turns_set import ONE_TURN, OVER_ASSISTANT, Item, items

DETECTORS = ("silence", "smart_turn")
FRAME_MS = 20
FRAME = RATE * FRAME_MS // 1000  # samples
CONCURRENCY = 3  # sessions played at once
QUIET_S = 1.5  # after the item: the ASR has said all it will when quiet this long
EXTRA_MS = 10_000  # audio sent after the item at most, waiting for that
CLAIM_TIMEOUT = 30.0
PAD_MS = 1000  # silence sent before each item (the session's audio_ms count it, the labels not)
# Goals of the issue, printed beside the figures.
GOALS = {"false_cutoff_rate": 0.05, "eot_mean_ms": 300, "backchannel_rate": 0.0, "echo_rate": 0.0,
         "barge_in_stop_ms": 200}
RESULT_KEYS = ("cores", "items", "detectors", "turn_model", "goals")


def _pcm16() -> Any:
    from schemas import AudioParams

    return AudioParams(format="pcm16", sample_rate=RATE, channels=1, frame_duration=FRAME_MS)


@dataclass
class Speaker:
    """The TTS speaker's part: the assistant's turn sent frame by frame, held while paused."""

    pcm: np.ndarray  # int16
    turn_id: str
    pos: int = 0  # samples sent
    paused: bool = False
    started: bool = False
    interrupted: bool = False
    stopped: bool = False  # tts.stopped sent

    @property
    def done(self) -> bool:
        return self.interrupted or self.pos >= len(self.pcm)

    def next_frame(self) -> np.ndarray | None:
        if not self.started or self.paused or self.done:
            return None
        frame = self.pcm[self.pos:self.pos + FRAME]
        self.pos += len(frame)
        return frame

    def heard(self, event: Any) -> None:
        from schemas import TurnInterrupted, TurnPaused, TurnResumed

        if getattr(event, "turn_id", None) != self.turn_id:
            return
        if isinstance(event, TurnPaused):
            self.paused = True
        elif isinstance(event, TurnResumed):
            self.paused = False
        elif isinstance(event, TurnInterrupted):
            self.interrupted = True


@dataclass
class Heard:
    """What the stack said about one item: (seconds since its first frame was sent, event)."""

    item: Item
    events: list[tuple[float, Any]] = field(default_factory=list)
    end_sent_s: float | None = None  # when the frame holding the end of speech was sent

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


async def play(bus: Any, sessions: dict[str, Any], item: Item) -> Heard:
    """`item` into a session of its own at real time; every event of the session, timed."""
    from bus.client import Message
    from bus.subjects import audio_in, audio_out, session_events
    from schemas import SessionEnded, SessionStarted, TtsStarted, TtsStopped, decode, new_id

    started = SessionStarted(session_id=new_id(), transport="bench", language=item.language,
                             audio_in=_pcm16(), audio_out=_pcm16(),
                             echo_cancelled=False if item.echo else None)
    sid = started.session_id
    speaker = Speaker(np.frombuffer(item.assistant, np.int16), turn_id=new_id())
    heard = Heard(item)
    began = time.monotonic()

    async def on_event(msg: Message) -> None:
        now = time.monotonic()
        with contextlib.suppress(Exception):  # another kind of message
            event = decode(msg.data)
            heard.events.append((now - began, event))
            speaker.heard(event)

    sub = await bus.subscribe(session_events(sid), on_event)
    try:
        await bus.flush()
        await bus.publish(started)
        async with asyncio.timeout(CLAIM_TIMEOUT):
            # The ASR worker has claimed it and listens to its audio (the task is made last).
            while (pipeline := sessions.get(sid)) is None or pipeline.task is None:
                await asyncio.sleep(0.01)
        began = time.monotonic()
        mic = np.frombuffer(item.mic, np.int16)
        cap = item.duration_ms + EXTRA_MS  # a turn paused for good ends the item after all
        tape = np.zeros(cap * RATE // 1000 + FRAME, np.int32)  # what the speaker played, by audio time
        delay = item.echo.delay_ms * RATE // 1000 if item.echo else 0
        gain = 10 ** (item.echo.gain_db / 20) if item.echo else 0.0
        end_frame = item.end_ms // FRAME_MS if item.speech else -1
        # Silence first: the worker may still be subscribing to the assistant's audio (the echo
        # reference) after it listens to the microphone. The labels count from after it.
        silence = bytes(FRAME * 2)
        for k in range(PAD_MS // FRAME_MS):
            await bus.publish_core(audio_in(sid), silence)
            await asyncio.sleep(max(0.0, began + (k + 1) * FRAME_MS / 1000 - time.monotonic()))
        began = time.monotonic()
        n = 0
        while True:
            at_ms = n * FRAME_MS
            if at_ms >= cap or (at_ms >= item.duration_ms and (not item.assistant or speaker.stopped)
                                and _said_all(heard, pipeline, time.monotonic() - began)):
                break
            if item.assistant and not speaker.started and at_ms >= item.assistant_at_ms:
                speaker.started = True
                await bus.publish(TtsStarted(session_id=sid, turn_id=speaker.turn_id, provider="bench"))
            out = speaker.next_frame()
            if out is not None:
                await bus.publish_core(audio_out(sid), out.tobytes())
                tape[n * FRAME:n * FRAME + len(out)] = out
            if speaker.started and speaker.done and not speaker.stopped:
                speaker.stopped = True
                await bus.publish(TtsStopped(session_id=sid, turn_id=speaker.turn_id,
                                             spoken_ms=speaker.pos * 1000 // RATE))
            # The microphone's frame goes once it is captured: at the end of its 20 ms.
            await asyncio.sleep(max(0.0, began + (n + 1) * FRAME_MS / 1000 - time.monotonic()))
            frame = np.zeros(FRAME, np.int32)
            part = mic[n * FRAME:(n + 1) * FRAME]
            frame[:len(part)] += part
            if delay or gain:
                start = n * FRAME - delay
                if start >= 0:
                    frame += (tape[start:start + FRAME] * gain).astype(np.int32)
            await bus.publish_core(audio_in(sid), np.clip(frame, -32768, 32767).astype(np.int16).tobytes())
            if n == end_frame:
                heard.end_sent_s = time.monotonic() - began
            n += 1
        await bus.publish(SessionEnded(session_id=sid, reason="client_closed"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while sessions.get(sid) is pipeline:  # it has said all it will
                    await asyncio.sleep(0.05)
        return heard
    finally:
        await sub.stop()


def _said_all(heard: Heard, pipeline: Any, now_s: float) -> bool:
    """Whether the ASR has caught up with the audio sent, transcribed every utterance and
    fallen quiet, with every pause of the assistant resolved (resumed or interrupted): the
    microphone goes on sending silence until then, as a client's does."""
    from schemas import TurnInterrupted, TurnPaused, TurnResumed

    if not pipeline.queue.empty():
        return False
    # The latest utterance's transcript (each waits for the one before): its words may still
    # interrupt, long after the pause resumed on its timeout (whisper on a busy machine).
    finals = getattr(pipeline, "_finals", None)
    if finals is not None and not finals.done():
        return False
    if heard.events and now_s - heard.events[-1][0] < QUIET_S:
        return False
    pauses = len(heard.of(TurnPaused))
    return pauses <= len(heard.of(TurnResumed)) + len(heard.of(TurnInterrupted))


def grade(heard: Heard, silence_ms: int) -> dict[str, Any]:
    """One item's outcome against its labels."""
    from schemas import (
        SpeechIgnored,
        SpeechStopped,
        TranscriptFinal,
        TurnInterrupted,
        TurnPaused,
        TurnResumed,
    )

    item = heard.item
    stops = heard.of(SpeechStopped)
    row: dict[str, Any] = {"name": item.name, "kind": item.kind, "language": item.language,
                           "utterances": len(stops),
                           "ends": [e.end.by if e.end is not None else "silence" for _, e in stops],
                           "heard": [e.text for _, e in heard.of(TranscriptFinal)]
                           + [f"({e.reason}) {e.text}" for _, e in heard.of(SpeechIgnored)]}
    # Where each turn was judged over: the end of its speech plus the silence heard (with
    # no `end`, an older ASR: its silence wait).
    judged = [e.audio_ms - PAD_MS + (e.end.silence_ms if e.end is not None else silence_ms)
              for _, e in stops]
    if item.kind in ONE_TURN:
        row["cut"] = any(j < item.end_ms for j in judged)
        row["missed"] = not stops
        if stops and not row["cut"]:
            row["eot_ms"] = judged[0] - item.end_ms
            if heard.end_sent_s is not None:
                row["eot_wall_ms"] = (stops[0][0] - heard.end_sent_s) * 1000
        probabilities = [e.end.probability for _, e in stops
                         if e.end is not None and e.end.probability is not None]
        if probabilities:
            row["probability"] = probabilities[-1]
    if item.kind in OVER_ASSISTANT:
        paused = heard.of(TurnPaused)
        interrupted = [(t, e) for t, e in heard.of(TurnInterrupted) if e.reason == "barge_in"]
        row |= {"paused": bool(paused), "interrupted": bool(interrupted),
                "resumed": [e.reason for _, e in heard.of(TurnResumed)],
                "ignored": [e.reason for _, e in heard.of(SpeechIgnored)]}
        if item.kind == "barge_in":
            # Only what the request did: the echo before it may have paused the turn already.
            onset_s = item.onset_ms / 1000
            row["early"] = any(t < onset_s for t, _ in paused + interrupted)
            first = min([t for t, _ in paused + interrupted if t >= onset_s], default=None)
            if first is not None:
                row["stop_ms"] = (first - onset_s) * 1000
            later = [t for t, _ in interrupted if t >= onset_s]
            if later:
                row["interrupt_ms"] = (later[0] - onset_s) * 1000
    return row


def _rate(hit: int, n: int) -> float | None:
    return hit / n if n else None


def _stats(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered) if ordered else None,
            "p95": percentile(ordered, 95) if ordered else None}


def summarise(detector: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def kind(*names: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] in names]

    split = kind("paused", "trailing")
    complete = kind("complete")
    eot = [r["eot_ms"] for r in complete if "eot_ms" in r]
    eot_wall = [r["eot_wall_ms"] for r in complete if "eot_wall_ms" in r]
    false_stops = [r for r in kind("backchannel", "cough") if r["paused"] or r["interrupted"]]
    barge = kind("barge_in")
    stop = [r["stop_ms"] for r in barge if "stop_ms" in r]
    out: dict[str, Any] = {
        "detector": detector,
        "false_cutoff": {"n": len(split), "cut": sum(r["cut"] for r in split),
                         "rate": _rate(sum(r["cut"] for r in split), len(split)),
                         "complete_cut": sum(r["cut"] for r in complete),
                         "missed": sum(r["missed"] for r in kind(*ONE_TURN))},
        "eot": {"n": len(eot), "audio_ms": _stats(eot), "wall_ms": _stats(eot_wall)},
        "resume": {"n": len(false_stops),
                   "resumed": sum(bool(r["resumed"]) and not r["interrupted"] for r in false_stops),
                   "rate": _rate(sum(bool(r["resumed"]) and not r["interrupted"] for r in false_stops),
                                 len(false_stops))},
        "barge_in": {"n": len(barge), "stopped": len(stop),
                     "interrupted": sum(r["interrupted"] for r in barge),
                     "early": sum(r["early"] for r in barge),
                     "stop_ms": _stats(stop),
                     "interrupt_ms": _stats([r["interrupt_ms"] for r in barge if "interrupt_ms" in r])},
        "ends": dict(Counter(end for r in rows for end in r["ends"])),
        "items": rows,
    }
    for name in ("backchannel", "cough", "echo"):
        group = kind(name)
        hits = sum(r["interrupted"] for r in group)
        out[name] = {"n": len(group), "interrupted": hits, "paused": sum(r["paused"] for r in group),
                     "rate": _rate(hits, len(group))}
    return out


def turn_model_cost(item_list: list[Item], rounds: int = 3) -> dict[str, Any] | None:
    """The turn model's CPU and wall time per decision, on each spoken item's audio up to
    200 ms after its end of speech (what it is asked at a pause); None without items."""
    from actors.asr.turn_model import TurnModel

    windows = [item.mic[:(item.end_ms + 200) * RATE // 1000 * 2] for item in item_list if item.speech]
    if not windows:
        return None
    model = TurnModel()
    model.complete(windows[0])  # a first run's warm-up is not timed
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for window in windows:
            model.complete(window)
    decisions = rounds * len(windows)
    return {"decisions": decisions, "cpu_ms": (time.process_time() - cpu) * 1000 / decisions,
            "wall_ms": (time.perf_counter() - wall) * 1000 / decisions}


async def run_detector(bus: Any, detector: str, item_list: list[Item], data_dir: Path,
                       concurrency: int) -> list[dict[str, Any]]:
    """Every item through an ASR actor whose `[asr.turn] detector` is `detector`."""
    from actors.asr.actor import Asr
    from actors.runtime import ActorHost
    from bus.admin import delete_consumer
    from schemas import new_id
    from settings.config import Config

    class BenchAsr(Asr):  # a durable of its own: a deployment's ASR workers stay put
        name: ClassVar[str] = f"bench_turns_{new_id().lower()}"

    config = Config()  # the default settings, whatever ./vagent.toml says
    config.asr.engine = "moonshine"  # the offline engines, even where a Deepgram key is set
    config.asr.turn.detector = detector  # type: ignore[assignment]
    host = ActorHost(bus, [BenchAsr], config, data_dir)
    await host.start()
    try:
        asr = host.actors[0]
        assert isinstance(asr, Asr)
        # A first session per language loads the actor's engine for it: not graded.
        for warm in {i.language: i for i in reversed(item_list) if i.kind == "complete"}.values():
            await play(bus, asr.sessions, warm)
        gate = asyncio.Semaphore(concurrency)

        async def one(item: Item) -> Heard:
            async with gate:
                return await play(bus, asr.sessions, item)

        heard = await asyncio.gather(*(one(item) for item in item_list))
    finally:
        await host.stop()
        with contextlib.suppress(Exception):
            await delete_consumer(bus, "SESSIONS", BenchAsr.name)
    return [grade(h, config.asr.vad.silence_ms) for h in heard]


async def bench_turns(url: str | None = None, *, detectors: tuple[str, ...] = DETECTORS,
                      names: list[str] | None = None, kinds: list[str] | None = None,
                      concurrency: int = CONCURRENCY, data_dir: Path | None = None) -> dict[str, Any]:
    """Every figure (RESULT_KEYS) over the set's items (only `names` or `kinds`, when given)."""
    from domain.assistants import Assistants
    from projections.runtime import ProjectionService
    from settings import paths
    from settings.config import Config

    item_list = items(names, kinds)
    if not item_list:
        raise ValueError("no items chosen")
    results: dict[str, Any] = {
        "cores": os.cpu_count() or 1, "items": dict(Counter(i.kind for i in item_list)),
        "goals": GOALS, "turn_model": turn_model_cost([i for i in item_list if i.kind in ONE_TURN])}
    with tempfile.TemporaryDirectory(prefix="vagent-bench-turns-") as tmp:
        # The actor assembles its whisper model under its data dir: the one of the data dir
        # given (or the default), kept there for the next run.
        actor_dir = Path(tmp)
        models = (data_dir or paths.data_dir()) / "models"
        with contextlib.suppress(OSError):
            models.mkdir(parents=True, exist_ok=True)  # kept for the next run
            (actor_dir / "models").symlink_to(models.resolve())
        async with bench_nats(url) as (bus, own), contextlib.AsyncExitStack() as stack:
            if own:
                # The ASR heeds a client's language for the default assistant, which it reads
                # from the read models (a deployment's server has both already).
                projections = ProjectionService(bus, actor_dir)
                await projections.start()
                stack.push_async_callback(projections.stop)
                await Assistants(bus, Config()).ensure_default()
            results["detectors"] = [summarise(d, await run_detector(bus, d, item_list, actor_dir,
                                                                    concurrency))
                                    for d in detectors]
    return results


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def report(results: dict[str, Any]) -> str:
    from cli.display import table

    runs = results["detectors"]
    lines = [f"machine: {results['cores']} cores; items: "
             + ", ".join(f"{n} {kind}" for kind, n in results["items"].items()), ""]

    def row(label: str, goal: str, value: Any) -> list[str]:
        return [label, *(value(r) for r in runs), goal]

    def count(part: str, key: str = "interrupted") -> Any:
        return lambda r: f"{_pct(r[part]['rate'])} ({r[part][key]}/{r[part]['n']})"

    rows = [
        row("false cut-offs (paused, trailing)", "≤ 5 %",
            lambda r: f"{_pct(r['false_cutoff']['rate'])} "
                      f"({r['false_cutoff']['cut']}/{r['false_cutoff']['n']})"),
        row("end-of-turn delay, mean (audio)", "≤ 300 ms", lambda r: _ms(r["eot"]["audio_ms"]["mean"])),
        row("end-of-turn delay, p95 (audio)", "", lambda r: _ms(r["eot"]["audio_ms"]["p95"])),
        row("end-of-turn delay, mean (wall)", "", lambda r: _ms(r["eot"]["wall_ms"]["mean"])),
        row("end-of-turn delay, p95 (wall)", "", lambda r: _ms(r["eot"]["wall_ms"]["p95"])),
        row("backchannel false interruptions", "0", count("backchannel")),
        row("cough false interruptions", "0", count("cough")),
        row("echo false interruptions", "0", count("echo")),
        row("false interruptions resumed", "", count("resume", "resumed")),
        row("barge-ins stopped", "all",
            lambda r: f"{r['barge_in']['stopped']}/{r['barge_in']['n']} "
                      f"({r['barge_in']['interrupted']} interrupted"
                      + (f", {r['barge_in']['early']} by echo before" if r["barge_in"]["early"] else "")
                      + ")"),
        row("barge-in stop latency, mean", "≤ 200 ms", lambda r: _ms(r["barge_in"]["stop_ms"]["mean"])),
        row("barge-in stop latency, p95", "", lambda r: _ms(r["barge_in"]["stop_ms"]["p95"])),
        row("barge-in → turn.interrupted, mean", "", lambda r: _ms(r["barge_in"]["interrupt_ms"]["mean"])),
        row("turn ends by", "", lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["ends"].items()))),
    ]
    lines.append(table(["", *(r["detector"] for r in runs), "goal"], rows))
    model = results["turn_model"]
    lines += ["", "Turn model: " + (
        "none in this ASR" if model is None else
        f"{model['cpu_ms']:.1f} ms CPU, {model['wall_ms']:.1f} ms wall per decision "
        f"({model['decisions']} decisions on 8 s windows)")]
    off = [f"{i['name']} ({r['detector']})" for r in runs for i in r["items"] if _off_label(i)]
    if off:
        lines += ["", "Items off their label: " + ", ".join(off)]
    return "\n".join(lines)


def _off_label(row: dict[str, Any]) -> bool:
    """Cut off, missed, interrupted by what should not interrupt, or a barge-in not heard."""
    if row["kind"] in OVER_ASSISTANT:
        return bool(row["interrupted"]) != (row["kind"] == "barge_in")
    return bool(row["cut"] or row["missed"])


def print_report(results: dict[str, Any]) -> None:
    print(report(results))

