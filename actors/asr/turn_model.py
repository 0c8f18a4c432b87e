"""The turn model: Smart Turn v3.2 (Daily, BSD-2-Clause) says whether an utterance is complete.

The model hears the end of an utterance, up to 8 s of 16 kHz mono audio, as Whisper's
80-bin log-mel features and returns P(complete): that the speaker has finished their turn,
judged by intonation and words together, not by how long the silence is. The CPU ONNX file
is vendored (actors/asr/models, see docs/models.md); nothing is downloaded.

The input is made exactly as the model's authors make it (pipecat's local Smart Turn v3
analyzer): the last 8 s, zero-padded at the start when shorter; the waveform normalized to
zero mean and unit variance; then transformers' WhisperFeatureExtractor with 8 s chunks,
which faster-whisper's numpy feature extractor reproduces (to float32 precision).
"""

from __future__ import annotations

import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime
from faster_whisper.feature_extractor import FeatureExtractor

RATE = 16000
SECONDS = 8
SAMPLES = RATE * SECONDS
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
_NORM_EPS = 1e-7  # transformers' zero-mean unit-variance normalisation


def model_path() -> Path:
    return Path(str(resources.files("actors.asr").joinpath("models", MODEL_FILE)))


def last_window(pcm: bytes) -> np.ndarray:
    """The model's 8 s of audio from 16 kHz mono PCM16: its end, zero-padded at the start."""
    samples = np.frombuffer(pcm, "<i2")[-SAMPLES:].astype(np.float32) / 32768.0
    return np.pad(samples, (SAMPLES - len(samples), 0))


class Features:
    """Whisper's log-mel features of one 8 s window, shape (80, 800), float32."""

    def __init__(self) -> None:
        self._extract = FeatureExtractor(feature_size=80, sampling_rate=RATE, chunk_length=SECONDS)

    def __call__(self, window: np.ndarray) -> np.ndarray:
        x = (window - window.mean()) / np.sqrt(window.var() + _NORM_EPS)
        # No extra padding: 128 000 samples give 801 STFT frames, the last one dropped.
        return np.asarray(self._extract(x.astype(np.float32), padding=0), dtype=np.float32)


class TurnModel:
    """One ONNX session, shared by every session of an ASR actor: `run` is thread-safe, and
    each call computes on its calling thread (one intra-op thread: decisions of several
    sessions run side by side on the worker threads instead of fighting over one pool)."""

    def __init__(self, path: Path | None = None) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(
            str(path or model_path()), sess_options=options, providers=["CPUExecutionProvider"])
        self._features = Features()
        self._stats = threading.Lock()
        self.calls = 0
        self.cpu_s = 0.0  # thread CPU time spent deciding, for the benchmark

    def complete(self, pcm: bytes) -> float:
        """P(complete) of an utterance (16 kHz mono PCM16, its trailing silence included)."""
        began = time.thread_time()
        inputs = self._features(last_window(pcm))[np.newaxis]
        (out,) = self._session.run(None, {"input_features": inputs})
        with self._stats:
            self.calls += 1
            self.cpu_s += time.thread_time() - began
        return float(np.asarray(out).reshape(-1)[0])
