"""The committed turn-taking set: labelled items of a user talking to a speaking assistant.

Each item is a timeline of short recorded pieces (`tests/fixtures/turns/pieces/*.wav`, 16 kHz
mono PCM16, speech only) placed on the user's microphone track, and for the items heard over
the assistant, the assistant's own recorded turn played from `assistant_at_ms`; `set.json`
holds the timelines and their labels (where the user's speech is, in ms of the item's audio).
Storing the pieces, not the composed tracks, keeps the set small: the silences are made here.

Kinds, and what a turn-taking stack should do with each:

- `complete`: one whole sentence, then silence. One utterance, ended soon after the speech.
- `paused`: a sentence with a pause of 0.6–1.4 s at a point where it cannot end ("for …
  four people"). One utterance, not ended before the speaker finished.
- `trailing`: a question trailing off ("…, and…", "还有那个…"), a pause, then the rest.
  One utterance, as `paused`.
- `backchannel`: "mhm", "yeah", "ok", "嗯", "对", "好的" while the assistant speaks. No
  interruption; if the assistant paused, it resumes.
- `cough`: shaped noise bursts while the assistant speaks. As `backchannel`.
- `echo`: nothing said; the assistant's own voice comes back through the microphone, delayed
  50–200 ms and 6–15 dB quieter (a speaker device without echo cancellation). No interruption.
- `barge_in`: a real request while the assistant speaks (half of them with its echo too).
  An interruption, soon after the onset of the speech.

`make()` records the pieces with vagent's own offline voices and others: Piper's joe
(vagent's English voice, at three speeds), Kokoro's Japanese voices reading English (misaki's
lexicon) and Mandarin (misaki's G2P), Kokoro's jm_kumo (vagent's Mandarin voice) at 0.9×
speed, and seeded noise for the coughs. The assistant speaks with joe and jm_kumo, as
vagent does; the users talking over it never do. Run from a source checkout:

    uv run python -m benches.turns_set [piece …]   # only these pieces again
"""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benches.speech_set import FIXTURES, RATE, read_clip

HERE = FIXTURES / "turns"
PIECES = HERE / "pieces"
KINDS = ("complete", "paused", "trailing", "backchannel", "cough", "echo", "barge_in")
OVER_ASSISTANT = frozenset({"backchannel", "cough", "echo", "barge_in"})
ONE_TURN = frozenset({"complete", "paused", "trailing"})  # the user alone: one utterance
LEAD_MS = 300  # silence before the first piece
TAIL_MS = 3000  # after the last: room for a detector waiting on an incomplete sentence
USER_DBFS = -20.0  # a user's speech level (RMS over its loud frames)
ASSISTANT_DBFS = -18.0  # the assistant's outbound audio level
SPEECH_DBFS = -40.0  # a 20 ms frame louder than this (relative to full scale) is speech
FRAME_MS = 20

# (piece id, text or cough, voice, speed). Voices: joe (Piper), kokoro:<voice> (Mandarin
# phonemes), kokoro-en:<voice> (English lexicon phonemes, so only words it knows), hum (a
# voiced "mhm": no voice here says one that a recogniser hears as one), cough:<seed>.
Piece = tuple[str, str, str, float]
PIECE_LIST: tuple[Piece, ...] = (
    # the assistant's turns (vagent's own voices)
    ("a_en", "Sure. Tomorrow in Paris it will be sunny in the morning, with a few clouds in the "
             "afternoon and a high of twenty two degrees.", "joe", 1.0),
    ("a_zh", "好的。明天北京白天晴转多云，最高气温二十二度，晚上有小雨，出门记得带伞。",
     "kokoro:jm_kumo", 1.0),
    # complete
    ("c_en1", "What's the weather like in Paris tomorrow?", "joe", 1.0),
    ("c_en2", "Please turn off the lights in the kitchen.", "joe", 0.85),
    ("c_en3", "Set a timer for ten minutes.", "joe", 1.15),
    ("c_en4", "Can you play some quiet music in the living room?", "kokoro-en:jf_tebukuro", 1.0),
    ("c_zh1", "明天北京的天气怎么样？", "kokoro:jf_nezumi", 1.0),
    ("c_zh2", "帮我把客厅的灯关掉。", "kokoro:jf_alpha", 1.0),
    ("c_zh3", "设置一个十分钟的计时器。", "kokoro:jf_gongitsune", 1.0),
    ("c_zh4", "播放一首轻松的音乐吧。", "kokoro:jm_kumo", 0.9),
    # paused: the sentence's two halves
    ("p_en1a", "I'd like to book a table for", "joe", 1.0),
    ("p_en1b", "four people tomorrow evening.", "joe", 1.0),
    ("p_en2a", "Can you remind me to call", "kokoro-en:jf_alpha", 1.0),
    ("p_en2b", "my mother at six o'clock?", "kokoro-en:jf_alpha", 1.0),
    ("p_en3a", "Turn the heating up to", "joe", 1.15),
    ("p_en3b", "twenty one degrees, please.", "joe", 1.15),
    ("p_zh1a", "我想预订一张", "kokoro:jf_nezumi", 1.0),
    ("p_zh1b", "明天去上海的火车票。", "kokoro:jf_nezumi", 1.0),
    ("p_zh2a", "帮我提醒一下，", "kokoro:jf_gongitsune", 1.0),
    ("p_zh2b", "明天早上八点开会。", "kokoro:jf_gongitsune", 1.0),
    ("p_zh3a", "把卧室的空调", "kokoro:jf_tebukuro", 1.0),
    ("p_zh3b", "调到二十六度。", "kokoro:jf_tebukuro", 1.0),
    # trailing off, then the rest
    ("t_en1a", "What time does the museum open, and...", "joe", 0.9),
    ("t_en1b", "how much are the tickets?", "joe", 0.9),
    ("t_en2a", "Tell me about the weather, and...", "kokoro-en:jf_tebukuro", 1.0),
    ("t_en2b", "whether I need an umbrella.", "kokoro-en:jf_tebukuro", 1.0),
    ("t_zh1a", "我想问一下明天的天气，还有那个…", "kokoro:jf_alpha", 1.0),
    ("t_zh1b", "周末的安排。", "kokoro:jf_alpha", 1.0),
    ("t_zh2a", "帮我查一下，那个…", "kokoro:jf_nezumi", 1.0),
    ("t_zh2b", "最近的地铁站在哪里。", "kokoro:jf_nezumi", 1.0),
    # backchannels
    ("b_en1", "mhm.", "hum:1", 1.0),
    ("b_en2", "yeah.", "kokoro-en:jf_tebukuro", 1.0),
    ("b_en3", "okay.", "kokoro-en:jf_alpha", 1.1),
    ("b_zh1", "嗯。", "kokoro:jf_nezumi", 1.0),
    ("b_zh2", "对。", "kokoro:jf_gongitsune", 1.0),
    ("b_zh3", "好的。", "kokoro:jf_tebukuro", 1.0),
    # coughs
    ("k_1", "", "cough:1", 1.0),
    ("k_2", "", "cough:2", 1.0),
    # real barge-ins
    ("i_en1", "Stop, wait a moment, I have another question.", "kokoro-en:jf_tebukuro", 1.0),
    ("i_en2", "Actually, can you tell me about Berlin instead?", "kokoro-en:jf_alpha", 1.0),
    ("i_zh1", "等一下，我想问另一个问题。", "kokoro:jf_nezumi", 1.0),
    ("i_zh2", "不对，我说的是上海的天气。", "kokoro:jf_gongitsune", 1.0),
)

# name → (kind, language, [(piece, pause before it in ms)], assistant turn or None,
# ms into the assistant's speech the user's first piece starts, (echo delay ms, gain dB) or None)
Recipe = tuple[str, str, list[tuple[str, int]], str | None, int, tuple[int, float] | None]
RECIPES: dict[str, Recipe] = {
    "complete_en1": ("complete", "en", [("c_en1", 0)], None, 0, None),
    "complete_en2": ("complete", "en", [("c_en2", 0)], None, 0, None),
    "complete_en3": ("complete", "en", [("c_en3", 0)], None, 0, None),
    "complete_en4": ("complete", "en", [("c_en4", 0)], None, 0, None),
    "complete_zh1": ("complete", "zh", [("c_zh1", 0)], None, 0, None),
    "complete_zh2": ("complete", "zh", [("c_zh2", 0)], None, 0, None),
    "complete_zh3": ("complete", "zh", [("c_zh3", 0)], None, 0, None),
    "complete_zh4": ("complete", "zh", [("c_zh4", 0)], None, 0, None),
    "paused_en1": ("paused", "en", [("p_en1a", 0), ("p_en1b", 800)], None, 0, None),
    "paused_en2": ("paused", "en", [("p_en2a", 0), ("p_en2b", 1200)], None, 0, None),
    "paused_en3": ("paused", "en", [("p_en3a", 0), ("p_en3b", 1400)], None, 0, None),
    "paused_zh1": ("paused", "zh", [("p_zh1a", 0), ("p_zh1b", 600)], None, 0, None),
    "paused_zh2": ("paused", "zh", [("p_zh2a", 0), ("p_zh2b", 1000)], None, 0, None),
    "paused_zh3": ("paused", "zh", [("p_zh3a", 0), ("p_zh3b", 1400)], None, 0, None),
    "trailing_en1": ("trailing", "en", [("t_en1a", 0), ("t_en1b", 1300)], None, 0, None),
    "trailing_en2": ("trailing", "en", [("t_en2a", 0), ("t_en2b", 1000)], None, 0, None),
    "trailing_zh1": ("trailing", "zh", [("t_zh1a", 0), ("t_zh1b", 1200)], None, 0, None),
    "trailing_zh2": ("trailing", "zh", [("t_zh2a", 0), ("t_zh2b", 900)], None, 0, None),
    "backchannel_en1": ("backchannel", "en", [("b_en1", 0)], "a_en", 1500, None),
    "backchannel_en2": ("backchannel", "en", [("b_en2", 0)], "a_en", 2500, None),
    "backchannel_en3": ("backchannel", "en", [("b_en3", 0)], "a_en", 3500, None),
    "backchannel_zh1": ("backchannel", "zh", [("b_zh1", 0)], "a_zh", 1500, None),
    "backchannel_zh2": ("backchannel", "zh", [("b_zh2", 0)], "a_zh", 2500, None),
    "backchannel_zh3": ("backchannel", "zh", [("b_zh3", 0)], "a_zh", 3500, None),
    "cough_en": ("cough", "en", [("k_1", 0)], "a_en", 2000, None),
    "cough_zh": ("cough", "zh", [("k_2", 0)], "a_zh", 2000, None),
    "echo_en1": ("echo", "en", [], "a_en", 0, (80, -8.0)),
    "echo_en2": ("echo", "en", [], "a_en", 0, (180, -14.0)),
    "echo_zh1": ("echo", "zh", [], "a_zh", 0, (120, -6.0)),
    "echo_zh2": ("echo", "zh", [], "a_zh", 0, (50, -12.0)),
    "barge_in_en1": ("barge_in", "en", [("i_en1", 0)], "a_en", 2000, None),
    "barge_in_en2": ("barge_in", "en", [("i_en2", 0)], "a_en", 2500, (100, -12.0)),
    "barge_in_zh1": ("barge_in", "zh", [("i_zh1", 0)], "a_zh", 2000, None),
    "barge_in_zh2": ("barge_in", "zh", [("i_zh2", 0)], "a_zh", 2500, (150, -10.0)),
}


@dataclass(frozen=True)
class Echo:
    delay_ms: int
    gain_db: float


@dataclass(frozen=True)
class Item:
    """One labelled item: the user's microphone track and, over the assistant, its turn."""

    name: str
    kind: str
    language: str
    text: str  # what the user says (empty for coughs and echo)
    mic: bytes  # 16 kHz PCM16: what the user's microphone hears of the user (echo added live)
    speech: tuple[tuple[int, int], ...]  # the user's speech, [start, end) ms of `mic`
    assistant: bytes = b""  # the assistant's turn as sent to the client (16 kHz PCM16)
    assistant_at_ms: int = 0  # when the assistant starts speaking, ms of `mic`
    echo: Echo | None = None  # its voice back in the microphone (a device without AEC)

    @property
    def duration_ms(self) -> int:
        return len(self.mic) * 1000 // 2 // RATE

    @property
    def onset_ms(self) -> int:
        return self.speech[0][0] if self.speech else 0

    @property
    def end_ms(self) -> int:
        return self.speech[-1][1] if self.speech else 0


def items(names: list[str] | None = None, kinds: list[str] | None = None) -> list[Item]:
    """The set's items in set.json's order (only `names` or `kinds`, when given)."""
    path = HERE / "set.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the turn-taking set is part of a source checkout")
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    cache: dict[str, bytes] = {}

    def piece(name: str) -> bytes:
        if name not in cache:
            cache[name] = read_clip(PIECES / f"{name}.wav")
        return cache[name]

    out = []
    for name, entry in spec["items"].items():
        if (names is not None and name not in names) or (kinds is not None and entry["kind"] not in kinds):
            continue
        mic = bytearray(entry["duration_ms"] * RATE // 1000 * 2)
        for placed in entry["mic"]:
            pcm = piece(placed["piece"])
            at = placed["at_ms"] * RATE // 1000 * 2
            mic[at:at + len(pcm)] = pcm
        echo = entry.get("echo")
        out.append(Item(
            name=name, kind=entry["kind"], language=entry["language"], text=entry["text"],
            mic=bytes(mic), speech=tuple((s, e) for s, e in entry["speech"]),
            assistant=piece(entry["assistant"]) if entry.get("assistant") else b"",
            assistant_at_ms=entry.get("assistant_at_ms", 0),
            echo=Echo(echo["delay_ms"], echo["gain_db"]) if echo else None))
    return out


def speech_bounds(pcm: bytes) -> tuple[int, int]:
    """Where a piece's speech starts and ends (ms): its first and last frames above SPEECH_DBFS."""
    samples = np.frombuffer(pcm, np.int16).astype(np.float64) / 32768.0
    size = RATE * FRAME_MS // 1000
    n = len(samples) // size
    power = 10 * np.log10(np.mean(samples[:n * size].reshape(n, size) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(power > SPEECH_DBFS)
    if not len(loud):
        return 0, 0
    return int(loud[0] * FRAME_MS), int((loud[-1] + 1) * FRAME_MS)


# --- making the set -------------------------------------------------------------------------

def _level(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """Scaled so its loud frames' RMS is `dbfs`, then trimmed to its speech (20 ms kept)."""
    size = RATE * FRAME_MS // 1000
    n = len(samples) // size
    frames = samples[:n * size].reshape(n, size)
    power = np.mean(frames ** 2, axis=1)
    loud = power > (np.max(power) * 10 ** (-30 / 10))
    rms = np.sqrt(np.mean(power[loud])) if loud.any() else 1.0
    scaled = samples * (10 ** (dbfs / 20) / max(rms, 1e-9))
    idx = np.flatnonzero(loud)
    first, last = max(0, int(idx[0]) - 1), min(n, int(idx[-1]) + 2)
    return np.clip(scaled[first * size:last * size], -1.0, 1.0)


def _cough(seed: int) -> np.ndarray:
    """Two bursts of band-limited noise, fast attack and a decay of ~80 ms, as a cough."""
    rng = np.random.default_rng(seed)
    out = []
    for length_s, gap_s in ((0.28, 0.12), (0.22, 0.0)):
        n = int(length_s * RATE)
        noise = rng.standard_normal(n)
        # a crude colour: a moving average (lower) plus a first difference (brighter)
        coloured = np.convolve(noise, np.ones(6) / 6, mode="same") + 0.4 * np.diff(noise, prepend=0)
        t = np.arange(n) / RATE
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / 0.08)
        out += [coloured * envelope, np.zeros(int(gap_s * RATE))]
    return np.concatenate(out)


def _hum() -> np.ndarray:
    """A closed-mouth "mhm": two nasal hums, the second rising, as a harmonic series at a
    gliding pitch, low-passed (a nasal murmur has little above 500 Hz)."""
    out = []
    for length_s, f0_from, f0_to, gap_s in ((0.16, 115, 105, 0.07), (0.26, 100, 150, 0.0)):
        n = int(length_s * RATE)
        phase = 2 * np.pi * np.cumsum(np.linspace(f0_from, f0_to, n)) / RATE
        tone = np.convolve(sum(np.sin(h * phase) / h ** 1.2 for h in range(1, 12)),
                           np.ones(8) / 8, mode="same")
        t = np.arange(n) / RATE
        envelope = np.minimum(1.0, t / 0.03) * np.minimum(1.0, (length_s - t) / 0.05)
        out += [tone * envelope, np.zeros(int(gap_s * RATE))]
    return np.concatenate(out)


def _voices() -> dict[str, Callable[[str, str, float], np.ndarray]]:
    """voice kind → (text, voice name, speed) → float samples at RATE."""
    from piper import SynthesisConfig

    from actors.tts import kokoro_voice
    from actors.tts.piper_voice import _load, voice_files
    from audio.encode import resample

    piper = _load(*voice_files(None))
    kokoro = kokoro_voice.load()

    def to_float(pcm: bytes, rate: int) -> np.ndarray:
        return np.frombuffer(resample(pcm, rate, RATE), np.int16).astype(np.float64) / 32768.0

    def joe(text: str, _: str, speed: float) -> np.ndarray:
        config = SynthesisConfig(length_scale=1.0 / speed)
        pcm = b"".join(chunk.audio_int16_bytes for chunk in piper.synthesize(text, config))
        return to_float(pcm, piper.config.sample_rate)

    def zh(text: str, voice: str, speed: float) -> np.ndarray:
        pcm = b"".join(kokoro_voice.synthesize(kokoro, voice, p, speed) for p in kokoro_voice.pieces(text))
        return to_float(pcm, kokoro_voice.SAMPLE_RATE)

    def en(text: str, voice: str, speed: float) -> np.ndarray:
        # English words read from misaki's lexicon, punctuation kept (Kokoro pauses on it).
        import re

        phonemes = "".join(kokoro.english(t) if t[0].isalpha() else t
                           for t in re.findall(r"[A-Za-z']+|[,.?!]|\s+", text))
        tokens = kokoro.tokens(phonemes)
        style = kokoro.voices[voice]
        audio = kokoro.session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(style[len(tokens) - 1], dtype=np.float32).reshape(1, -1),
            "speed": np.array([speed], dtype=np.float32)})[0]
        pcm = (np.clip(np.asarray(audio).ravel(), -1, 1) * 32767).astype(np.int16).tobytes()
        return to_float(pcm, kokoro_voice.SAMPLE_RATE)

    def cough(_: str, seed: str, __: float) -> np.ndarray:
        return _cough(int(seed))

    def hum(*_: Any) -> np.ndarray:
        return _hum()

    return {"joe": joe, "kokoro": zh, "kokoro-en": en, "cough": cough, "hum": hum}


def _write(path: Path, samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return pcm


def make(out: Path = HERE, only: list[str] | None = None) -> dict[str, Any]:
    """Records every piece (those in `only`, when given; the others are read back) into
    `out`/pieces and writes `out`/set.json (the timelines and their labels); returns what
    set.json holds."""
    voices = _voices()
    (out / "pieces").mkdir(parents=True, exist_ok=True)
    texts = {p[0]: p[1] for p in PIECE_LIST}
    recorded: dict[str, bytes] = {}
    for name, text, voice, speed in PIECE_LIST:
        if only is not None and name not in only:
            recorded[name] = read_clip(out / "pieces" / f"{name}.wav")
            continue
        kind, _, who = voice.partition(":")
        level = ASSISTANT_DBFS if name.startswith("a_") else USER_DBFS
        recorded[name] = _write(out / "pieces" / f"{name}.wav", _level(voices[kind](text, who, speed), level))
        print(f"{name}: {len(recorded[name]) / 2 / RATE:.2f} s {text}")
    spec: dict[str, Any] = {"rate": RATE, "items": {}}
    for name, (kind, language, parts, assistant, into_ms, echo) in RECIPES.items():
        at = LEAD_MS + (into_ms if assistant else 0)
        placed, speech = [], []
        for piece, pause in parts:
            at += pause
            start, end = speech_bounds(recorded[piece])
            placed.append({"piece": piece, "at_ms": at})
            speech.append([at + start, at + end])
            at += len(recorded[piece]) * 1000 // 2 // RATE
        end = at
        if assistant:
            end = max(end, LEAD_MS + len(recorded[assistant]) * 1000 // 2 // RATE)
        entry: dict[str, Any] = {
            "kind": kind, "language": language,
            "text": " ".join(texts[p] for p, _ in parts if texts[p]).replace("... ", "… "),
            "mic": placed, "speech": speech, "duration_ms": end + TAIL_MS}
        if assistant:
            entry |= {"assistant": assistant, "assistant_at_ms": LEAD_MS,
                      "assistant_text": texts[assistant]}
        if echo:
            entry["echo"] = {"delay_ms": echo[0], "gain_db": echo[1]}
        spec["items"][name] = entry
    (out / "set.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return spec


if __name__ == "__main__":
    import sys

    make(only=sys.argv[1:] or None)
