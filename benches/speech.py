"""`vagent bench speech`: the offline speech engines on the committed speech test set.

Recognition, per engine and language, over the clips of `benches.speech_set`: error rate
(WER for English, CER for Mandarin), real-time factor (transcription time over audio time)
and the time one whole clip takes to transcribe; moonshine is also run on Mandarin, which
it cannot hear, as the baseline whisper is there to beat. Language identification: how
often whisper's guess (zh or en, as for an `auto` assistant's first utterance) is the
clip's language.

End of speech → final transcript, through the real ASR actor over NATS (an embedded
temporary server unless `--nats`): each clip is streamed at real time into a session of its
own (the default assistant, with the clip's language as the client's hint, so English is
heard by moonshine and Mandarin by whisper), from the end of its speech (the last 20 ms frame
above SPEECH_DBFS) to `speech.stopped` (the VAD's silence wait) and to `transcript.final`.

Speech synthesis, per voice: time from the text to the first audio, the real-time factor,
and the audio read back by the same language's recogniser (moonshine for English, whisper
for Mandarin) against the text: Piper's bundled voice for English, Kokoro's `jm_kumo` for
Mandarin (what vagent speaks each language with).

Memory: the process's resident memory added by loading each model, and its peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audio.encode import resample
from benches.common import bench_nats, percentile
from benches.edge import rss_mib
from benches.local_llm import peak_rss_mib
from benches.speech_set import RATE, Clip, clips, error_rate

LANGUAGES = ("en", "zh")
METRIC = {"en": "WER", "zh": "CER"}
# (engine, language) pairs measured; whisper on English is what an `auto` assistant's
# English speakers would get were they identified as English but heard by whisper.
ASR_RUNS = (("moonshine", "en"), ("whisper", "zh"), ("whisper", "en"), ("moonshine", "zh"))
ACTOR_ENGINE = {"en": "moonshine", "zh": "whisper"}  # what vagent hears each language with
TTS_VOICES = (("piper", "en"), ("kokoro", "zh"))  # (provider, language)
SPEECH_DBFS = -40.0  # a 20 ms frame louder than this is speech
FRAME_MS = 20
FRAME = RATE * 2 * FRAME_MS // 1000
LEAD_MS = 1000  # silence before a clip: the ASR worker claims the session meanwhile
TAIL_MS = 1500  # after it: the VAD's silence wait (400 ms) and room to spare
FINAL_TIMEOUT = 60.0
RESULT_KEYS = ("cores", "clips", "asr", "identify", "actor", "tts", "rss_start_mib", "rss_peak_mib")


def speech_end_ms(pcm: bytes) -> int:
    """Where the clip's speech ends: the end of its last frame above SPEECH_DBFS."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64) / 32768.0
    n = len(samples) // (FRAME // 2)
    frames = samples[:n * (FRAME // 2)].reshape(n, FRAME // 2)
    loud = np.flatnonzero(10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12) > SPEECH_DBFS)
    return int((loud[-1] + 1) * FRAME_MS) if len(loud) else 0


class Loaded:
    """The models loaded so far, each with the resident memory its loading added."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.added_mib: dict[str, float] = {}
        self.models: dict[str, Any] = {}

    async def get(self, name: str, make: Callable[[], Awaitable[Any]]) -> Any:
        if name not in self.models:
            before = rss_mib(os.getpid())
            self.models[name] = await make()
            self.added_mib[name] = rss_mib(os.getpid()) - before
        return self.models[name]

    async def moonshine(self) -> Any:
        async def make() -> Any:
            from actors.asr.engine_moonshine import MoonshineEngine

            engine = MoonshineEngine()
            await engine.load()
            return engine

        return await self.get("moonshine", make)

    async def whisper(self) -> Any:
        async def make() -> Any:
            from actors.asr.engine_whisper import WhisperEngine

            engine = WhisperEngine(self.data_dir)
            await engine.load()
            return engine

        return await self.get("whisper", make)

    async def transcribe(self, engine: str, language: str, pcm: bytes) -> str:
        """One whole utterance, as the engine hears a finished utterance."""
        if engine == "moonshine":
            moonshine = await self.moonshine()
            text: str = await moonshine._run(moonshine.transcribe, pcm)
            return text
        whisper = await self.whisper()
        whisper.language = language
        text = await whisper.transcribe_async(pcm)
        return text

    async def close(self) -> None:
        for model in self.models.values():
            with contextlib.suppress(Exception):
                await model.close()


async def bench_asr(loaded: Loaded, engine: str, language: str, clip_set: list[Clip]) -> dict[str, Any]:
    await loaded.transcribe(engine, language, clip_set[0].pcm)  # a first call's warm-up is not timed
    pairs, seconds = [], []
    for clip in clip_set:
        began = time.perf_counter()
        heard = await loaded.transcribe(engine, language, clip.pcm)
        seconds.append(time.perf_counter() - began)
        pairs.append((clip.text, heard))
    audio = sum(c.seconds for c in clip_set)
    return {"engine": engine, "language": language, "clips": len(clip_set),
            "metric": METRIC[language], "error_rate": error_rate(pairs, language),
            "rtf": sum(seconds) / audio, "transcribe_p50_ms": statistics.median(seconds) * 1000,
            "heard": [heard for _, heard in pairs]}


async def bench_identify(loaded: Loaded, clip_set: list[Clip]) -> dict[str, Any]:
    whisper = await loaded.whisper()
    guesses, seconds = [], []
    for clip in clip_set:
        began = time.perf_counter()
        guesses.append(await whisper.detect_async(clip.pcm))
        seconds.append(time.perf_counter() - began)
    right = sum(g == c.language for g, c in zip(guesses, clip_set, strict=True))
    return {"clips": len(clip_set), "correct": right, "accuracy": right / len(clip_set),
            "p50_ms": statistics.median(seconds) * 1000}


async def heard_in_session(bus: Any, clip: Clip) -> tuple[float, float, Any]:
    """One session hearing `clip` at real time: seconds from the end of its speech to
    `speech.stopped` and to `transcript.final`, and that final."""
    from bus.client import Message
    from bus.subjects import audio_in, session_events
    from schemas import (
        AudioParams,
        SessionEnded,
        SessionStarted,
        SpeechStopped,
        TranscriptFinal,
        decode,
        new_id,
    )

    started = SessionStarted(
        session_id=new_id(), transport="bench", language=clip.language,
        audio_in=AudioParams(format="pcm16", sample_rate=RATE, channels=1, frame_duration=FRAME_MS))
    stopped_at: list[float] = []
    final: asyncio.Future[tuple[float, TranscriptFinal]] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Message) -> None:
        now = time.monotonic()
        with contextlib.suppress(Exception):  # another kind of message: not what is timed
            event = decode(msg.data)
            if isinstance(event, SpeechStopped) and not stopped_at:
                stopped_at.append(now)
            elif isinstance(event, TranscriptFinal) and not final.done():
                final.set_result((now, event))

    sub = await bus.subscribe(session_events(started.session_id), on_event)
    try:
        await bus.flush()
        await bus.publish(started)
        data = bytes(LEAD_MS * RATE // 1000 * 2) + clip.pcm + bytes(TAIL_MS * RATE // 1000 * 2)
        end_frame = (LEAD_MS + speech_end_ms(clip.pcm)) // FRAME_MS
        speech_ended = 0.0
        began = time.monotonic()
        for n, i in enumerate(range(0, len(data), FRAME)):
            await bus.publish_core(audio_in(started.session_id), data[i:i + FRAME])
            if n + 1 == end_frame:
                speech_ended = time.monotonic()
            await asyncio.sleep(max(0.0, began + (n + 1) * FRAME_MS / 1000 - time.monotonic()))
        async with asyncio.timeout(FINAL_TIMEOUT):
            final_at, event = await final
        stopped = stopped_at[0] if stopped_at else final_at
        return stopped - speech_ended, final_at - speech_ended, event
    finally:
        await sub.stop()
        await bus.publish(SessionEnded(session_id=started.session_id, reason="client_closed"))


async def bench_actor(url: str | None, data_dir: Path, clip_set: list[Clip]) -> list[dict[str, Any]]:
    """Each clip through the ASR actor at real time; per language, end of speech →
    speech.stopped and → transcript.final."""
    from actors.asr.actor import Asr
    from actors.runtime import ActorHost
    from bus.admin import delete_consumer
    from domain.assistants import Assistants
    from projections.runtime import ProjectionService
    from schemas import new_id
    from settings.config import Config

    run = new_id().lower()

    class BenchAsr(Asr):  # a durable of its own: a deployment's ASR workers stay put
        name: ClassVar[str] = f"bench_asr_{run}"

    config = Config()  # the default settings, whatever ./vagent.toml says
    config.asr.engine = "moonshine"  # the offline engines, even where a Deepgram key is set
    heard: dict[str, list[tuple[float, float, Clip, Any]]] = {}
    async with bench_nats(url) as (bus, own), contextlib.AsyncExitStack() as stack:
        if own:
            # The ASR actor heeds a client's language for the default assistant, which it
            # reads from the read models (a deployment's server has both already).
            projections = ProjectionService(bus, data_dir)
            await projections.start()
            stack.push_async_callback(projections.stop)
            await Assistants(bus, config).ensure_default()
        host = ActorHost(bus, [BenchAsr], config, data_dir)
        await host.start()
        try:
            # A first session per language loads the actor's engine for it: not timed.
            for clip in {c.language: c for c in reversed(clip_set)}.values():
                await heard_in_session(bus, clip)
            for clip in clip_set:
                stopped_s, final_s, final = await heard_in_session(bus, clip)
                heard.setdefault(clip.language, []).append((stopped_s, final_s, clip, final))
        finally:
            await host.stop()
            with contextlib.suppress(Exception):
                await delete_consumer(bus, "SESSIONS", BenchAsr.name)
    rows = []
    for language, runs in heard.items():
        stopped_ms = sorted(r[0] * 1000 for r in runs)
        final_ms = sorted(r[1] * 1000 for r in runs)
        rows.append({"engine": ",".join(sorted({r[3].provider or "?" for r in runs})),
                     "language": language, "clips": len(runs),
                     "speech_stopped_p50_ms": percentile(stopped_ms, 50),
                     "final_p50_ms": percentile(final_ms, 50), "final_p95_ms": percentile(final_ms, 95),
                     "metric": METRIC[language],
                     "error_rate": error_rate([(r[2].text, r[3].text) for r in runs], language),
                     "heard": [r[3].text for r in runs]})
    return rows


async def bench_tts(loaded: Loaded, provider: str, language: str, texts: list[str]) -> dict[str, Any]:
    from actors.tts.providers import open_provider
    from settings.config import TtsSettings

    voice = await loaded.get(f"{provider} voice", lambda: open_provider(TtsSettings(), provider))
    async for _ in voice.stream(texts[0]):  # a first call's warm-up is not timed
        pass
    first, took, audio_s, pairs = [], [], 0.0, []
    for text in texts:
        chunks: list[bytes] = []
        began = time.perf_counter()
        async for chunk in voice.stream(text):
            if not chunks:
                first.append(time.perf_counter() - began)
            chunks.append(chunk)
        took.append(time.perf_counter() - began)
        audio_s += sum(len(c) for c in chunks) / 2 / voice.sample_rate
        pcm = resample(b"".join(chunks), voice.sample_rate, RATE)
        pairs.append((text, await loaded.transcribe(ACTOR_ENGINE[language], language, pcm)))
    return {"provider": provider, "voice": voice.voice, "language": language, "sentences": len(texts),
            "first_audio_p50_ms": statistics.median(first) * 1000, "rtf": sum(took) / audio_s,
            "readback_engine": ACTOR_ENGINE[language], "metric": METRIC[language],
            "readback_error_rate": error_rate(pairs, language), "heard": [h for _, h in pairs]}


async def bench_speech(url: str | None = None, *, languages: tuple[str, ...] = LANGUAGES,
                       names: list[str] | None = None, actor: bool = True, tts: bool = True,
                       data_dir: Path | None = None) -> dict[str, Any]:
    """Every figure (RESULT_KEYS) over the clips of `languages` (only `names`, when given)."""
    from settings import paths

    sets = {language: clips(language, names) for language in languages}
    everything = [c for s in sets.values() for c in s]
    if not everything:
        raise ValueError("no clips chosen")
    results: dict[str, Any] = {"cores": os.cpu_count() or 1, "clips": {k: len(v) for k, v in sets.items()},
                               "rss_start_mib": rss_mib(os.getpid())}
    loaded = Loaded(data_dir or paths.data_dir())
    try:
        results["asr"] = [await bench_asr(loaded, engine, language, sets[language])
                          for engine, language in ASR_RUNS if sets.get(language)]
        results["identify"] = await bench_identify(loaded, everything)
        results["tts"] = [await bench_tts(loaded, provider, language, [c.text for c in sets[language]])
                          for provider, language in TTS_VOICES
                          if tts and sets.get(language)]
        for row in results["asr"]:
            row["rss_added_mib"] = loaded.added_mib[row["engine"]]
        for row in results["tts"]:
            row["rss_added_mib"] = loaded.added_mib[f"{row['provider']} voice"]
    finally:
        await loaded.close()
    with tempfile.TemporaryDirectory(prefix="vagent-bench-speech-") as tmp:
        # The actor assembles its own whisper model: point it at the one already assembled.
        actor_dir = Path(tmp)
        with contextlib.suppress(OSError):
            (actor_dir / "models").symlink_to((loaded.data_dir / "models").resolve())
        results["actor"] = await bench_actor(url, actor_dir, everything) if actor else []
    results["rss_peak_mib"] = peak_rss_mib(os.getpid()) or float("nan")
    return results


def report(results: dict[str, Any]) -> str:
    from cli.display import table

    pct = "{:.1%}".format
    lines = [f"machine: {results['cores']} cores; clips: "
             + ", ".join(f"{n} {lang}" for lang, n in results["clips"].items()), "",
             "Recognition (whole clips, engine alone)",
             table(["engine", "language", "clips", "error", "RTF", "per clip p50", "RSS added"],
                   [[r["engine"], r["language"], r["clips"], f"{r['metric']} {pct(r['error_rate'])}",
                     f"{r['rtf']:.2f}", f"{r['transcribe_p50_ms']:.0f} ms", f"{r['rss_added_mib']:.0f} MiB"]
                    for r in results["asr"]])]
    ident = results["identify"]
    lines += ["", f"Language identification (whisper, zh or en): {ident['correct']}/{ident['clips']} "
              f"right ({pct(ident['accuracy'])}), p50 {ident['p50_ms']:.0f} ms"]
    if results["actor"]:
        lines += ["", "End of speech → transcript, through the ASR actor over NATS (real-time audio)",
                  table(["engine", "language", "clips", "→ speech.stopped p50", "→ final p50",
                         "→ final p95", "error"],
                        [[r["engine"], r["language"], r["clips"], f"{r['speech_stopped_p50_ms']:.0f} ms",
                          f"{r['final_p50_ms']:.0f} ms", f"{r['final_p95_ms']:.0f} ms",
                          f"{r['metric']} {pct(r['error_rate'])}"] for r in results["actor"]])]
    if results["tts"]:
        lines += ["", "Synthesis (one sentence at a time; read back by the language's recogniser)",
                  table(["provider", "voice", "language", "sentences", "first audio p50", "RTF",
                         "read back", "RSS added"],
                        [[r["provider"], r["voice"], r["language"], r["sentences"],
                          f"{r['first_audio_p50_ms']:.0f} ms", f"{r['rtf']:.2f}",
                          f"{r['metric']} {pct(r['readback_error_rate'])}", f"{r['rss_added_mib']:.0f} MiB"]
                         for r in results["tts"]])]
    lines += ["", f"Process RSS: {results['rss_start_mib']:.0f} MiB at start, "
              f"{results['rss_peak_mib']:.0f} MiB at the peak"]
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    print(report(results))
