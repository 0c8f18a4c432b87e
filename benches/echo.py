"""`vagent bench echo`: the ASR's echo canceller (`actors.asr.echo`) on vagent's own voice.

A speaker device without echo cancellation, simulated: the assistant (Piper's joe voice, the
committed ASR fixtures, ~3.5 s of two sentences) is sent as the TTS sends it (Opus 24 kHz,
60 ms frames, two frames ahead of the one playing), and the device's microphone hears it
back later by `delay_ms`, `gain_db` quieter, muffled by a small speaker and with 80 ms of
room reverberation, over a faint noise floor; inbound audio comes in 60 ms chunks when
captured. Both streams go through `EchoRemover` exactly as the ASR pipeline calls it (the
times are simulated, so the run is deterministic and needs no server).

Figures: echo return loss enhancement (ERLE: how much quieter the echo is after the
canceller, input energy over output energy where only the echo plays) in the first second
(the canceller converging) and after it; whether silero still hears speech in the output;
double talk (the user, another voice, over the echo): how much of the user's voice is kept
and where silero hears it start; CPU per 10 ms frame, of AEC3 alone and of the whole
remover (placing and decoding the reference included); and a client that hears no echo at
all, which the remover must leave alone.
"""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
OUT_RATE = 24000  # the TTS's default outbound format: Opus, 24 kHz, 60 ms frames
FRAME_MS = 60
LEAD = 2  # frames the TTS sends ahead of the one playing (actors.tts.speaker.LEAD_FRAMES)
CHUNK = RATE * FRAME_MS // 1000  # inbound: 60 ms frames, as devices send them
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DELAYS_MS = (50, 100, 150, 250, 400)
GAINS_DB = (-10.0, 0.0)
USER_AT_MS = 1500


def _wav(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (RATE, 1, 2)
        return w.readframes(w.getnframes())


def assistant_voice() -> bytes:
    """About 3.5 s of the assistant speaking (two sentences, a short pause between), 16 kHz."""
    meta = json.loads((FIXTURES / "fixtures.json").read_text())
    parts = []
    for name in ("weather_paris", "kitchen_lights"):
        start = (meta[name]["speech_start_ms"] - 50) * RATE // 1000
        end = (meta[name]["speech_end_ms"] + 150) * RATE // 1000
        parts.append(_wav(FIXTURES / f"{name}.wav")[start * 2:end * 2])
    return parts[0] + bytes(RATE // 5 * 2) + parts[1]


def user_voice() -> np.ndarray:
    """Another speaker (Kokoro, not the assistant's Piper voice): "Please turn off the lights
    in the bedroom." """
    return samples(_wav(FIXTURES / "english" / "lights.wav"))


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, np.int16).astype(np.float64)


def outbound_frames(voice: bytes) -> list[bytes]:
    """The assistant's audio as the TTS sends it by default: Opus at 24 kHz, 60 ms frames."""
    from audio.encode import DEFAULT_OUT, AudioEncoder

    encoder = AudioEncoder(DEFAULT_OUT)
    return encoder.encode(voice, RATE) + encoder.end_segment()


def echo_of(voice: bytes, delay_ms: int = 100, gain_db: float = -10.0, seed: int = 7) -> np.ndarray:
    """`voice` as the device's microphone hears it from its own speaker, float samples: later
    by `delay_ms`, `gain_db` quieter, its top muffled (a small speaker) and a little room
    reverberation (80 ms of decaying reflections)."""
    x = samples(voice)
    x = np.convolve(x, [0.25, 0.5, 0.25])[:len(x)]  # a gentle low-pass
    rng = np.random.default_rng(seed)
    n = RATE * 80 // 1000
    room = rng.standard_normal(n) * np.exp(-np.arange(n) / (RATE * 0.02)) * 0.08
    room[0] = 1.0
    y = np.convolve(x, room)[:len(x)] * 10 ** (gain_db / 20)
    return np.concatenate([np.zeros(RATE * delay_ms // 1000), y])


def microphone(*sounds: tuple[int, np.ndarray], length: int, seed: int = 3) -> bytes:
    """16 kHz PCM16 of `length` samples: each (offset, samples) mixed in at its offset, over a
    faint noise floor (about -70 dBFS)."""
    mix = np.random.default_rng(seed).standard_normal(length) * 10.0
    for at, sound in sounds:
        sound = sound[:max(0, length - at)]
        mix[at:at + len(sound)] += sound
    return np.clip(mix, -32768, 32767).astype(np.int16).tobytes()


def play(remover: Any, frames: list[bytes], mic: bytes,
         stall: tuple[float, float] | None = None) -> bytes:
    """Both streams in the order they reach the ASR: outbound frame k when it is at most LEAD
    frames ahead of the one playing, inbound chunk j once its 60 ms have been captured.
    `stall` (from, seconds): the ASR's event loop busy meanwhile, so whatever came then is
    stamped when it wakes."""
    step = FRAME_MS / 1000
    timeline = [(max(0.0, (k - LEAD) * step), 0, k) for k in range(len(frames))]
    timeline += [((j + 1) * step, 1, j) for j in range(len(mic) // 2 // CHUNK)]
    out = bytearray()
    for at, inbound, n in sorted(timeline):
        if stall is not None and stall[0] <= at < stall[0] + stall[1]:
            at = stall[0] + stall[1]
        if inbound:
            out += remover.cancel(mic[n * CHUNK * 2:(n + 1) * CHUNK * 2], at)
        else:
            remover.played(frames[n], at)
    return bytes(out)


def onsets(pcm: bytes) -> list[int]:
    """Where silero hears speech start, ms."""
    from actors.asr.vad import Segmenter, SpeechStart

    return [b.start_ms for b in Segmenter().feed(pcm) if isinstance(b, SpeechStart)]


def db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(a ** 2) / np.sum(b ** 2)))


def remover() -> Any:
    from actors.asr.echo import EchoRemover
    from audio.encode import DEFAULT_OUT

    return EchoRemover(DEFAULT_OUT)


def echo_row(voice: bytes, frames: list[bytes], delay_ms: int, gain_db: float) -> dict[str, Any]:
    echo = echo_of(voice, delay_ms, gain_db)
    mic = microphone((0, echo), length=len(echo) + RATE)
    out = play(remover(), frames, mic)
    heard, left = samples(mic), samples(out)
    return {"delay_ms": delay_ms, "gain_db": gain_db,
            "erle_first_s_db": round(db(heard[:RATE], left[:RATE]), 1),
            "erle_db": round(db(heard[RATE:len(echo)], left[RATE:len(echo)]), 1),
            "speech_heard_before": bool(onsets(mic)), "speech_heard_after": bool(onsets(out))}


def double_talk(voice: bytes, frames: list[bytes]) -> dict[str, Any]:
    echo = echo_of(voice, 100, -10.0)
    user = user_voice()
    at = RATE * USER_AT_MS // 1000
    mic = microphone((0, echo), (at, user), length=len(echo) + RATE)
    out = samples(play(remover(), frames, mic))
    alone = onsets(microphone((at, user), length=len(mic) // 2))
    span = slice(at, at + len(user))
    return {"echo_to_user_db": round(db(echo[span], user[:max(0, len(echo) - at)]), 1),
            "user_kept_db": round(db(out[span], user), 1),
            "onset_alone_ms": alone[0] if alone else None,
            "onsets_after_ms": onsets(out.astype(np.int16).tobytes())}


def no_echo(voice: bytes, frames: list[bytes]) -> dict[str, Any]:
    """A client whose microphone hears none of the assistant (a headset), the user speaking
    2 s into the assistant's voice: what the remover makes of it."""
    user = user_voice()
    at = RATE * 2
    mic = microphone((at, user), length=at + len(user) + RATE // 2)
    r = remover()
    out = samples(play(r, frames, mic))
    return {"echo_judged": r.path.echo, "user_kept_db": round(db(out[at:at + len(user)], user), 1),
            "onset_alone_ms": onsets(mic)[0], "onsets_after_ms": onsets(out.astype(np.int16).tobytes())}


def cpu(voice: bytes, frames: list[bytes], repeats: int = 5) -> dict[str, float]:
    """Median CPU µs per 10 ms frame over `repeats` runs: AEC3 alone, and the whole remover."""
    from pywebrtc_audio import EchoCanceller

    mic = microphone((0, echo_of(voice)), length=len(voice) // 2 + RATE)
    near = np.frombuffer(mic, np.int16)
    far = np.frombuffer(voice + bytes(len(mic) - len(voice)), np.int16)
    aec, whole = [], []
    for _ in range(repeats):
        canceller = EchoCanceller(sample_rate=RATE)
        began, n = time.process_time(), 0
        for i in range(0, len(near) - 159, 160):
            canceller.process(near[i:i + 160], far[i:i + 160])
            n += 1
        aec.append((time.process_time() - began) / n * 1e6)
        r = remover()
        began = time.process_time()
        play(r, frames, mic)
        whole.append((time.process_time() - began) / max(1, r.frames) * 1e6)
    return {"aec3_us": round(float(np.median(aec))), "remover_us": round(float(np.median(whole)))}


def bench_echo() -> dict[str, Any]:
    voice = assistant_voice()
    frames = outbound_frames(voice)
    return {"cores": os.cpu_count(),
            "echo": [echo_row(voice, frames, d, g) for d in DELAYS_MS for g in GAINS_DB],
            "double_talk": double_talk(voice, frames), "no_echo": no_echo(voice, frames),
            "cpu_per_10ms_frame": cpu(voice, frames)}


def report(results: dict[str, Any]) -> str:
    lines = [f"Echo canceller (WebRTC AEC3) on the assistant's own voice, {results['cores']} cores",
             "", "| echo delay | echo level | ERLE, first second | ERLE, after | silero hears "
             "speech: before → after |", "|---|---|---|---|---|"]
    for r in results["echo"]:
        lines.append(f"| {r['delay_ms']} ms | {r['gain_db']:+.0f} dB | {r['erle_first_s_db']} dB | "
                     f"{r['erle_db']} dB | {'yes' if r['speech_heard_before'] else 'no'} → "
                     f"{'yes' if r['speech_heard_after'] else 'no'} |")
    d = results["double_talk"]
    c = results["cpu_per_10ms_frame"]
    n = results["no_echo"]
    lines += ["", f"Double talk (the user over the echo, echo {d['echo_to_user_db']} dB to the "
              f"user): the user's voice kept at {d['user_kept_db']} dB; silero hears it start at "
              f"{d['onsets_after_ms']} ms (alone: {d['onset_alone_ms']} ms)",
              f"No echo at all (a headset), the user 2 s into the assistant's voice: echo judged "
              f"{n['echo_judged']}, the user's voice kept at {n['user_kept_db']} dB, heard from "
              f"{n['onsets_after_ms']} ms (alone: {n['onset_alone_ms']} ms)",
              f"CPU per 10 ms frame: AEC3 {c['aec3_us']} µs; the whole remover (reference "
              f"placed and Opus-decoded) {c['remover_us']} µs"]
    return "\n".join(lines)


def print_report(results: dict[str, Any]) -> None:
    print(report(results))
