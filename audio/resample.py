"""PCM16 mono from one sample rate to another, chunk by chunk: for audio that comes at a
rate other than the one its consumer was promised (a fallback speech provider's)."""

from __future__ import annotations

import av
import numpy as np


class Resampler:
    """One stream's converter: the filter spans chunks, so one object per stream."""

    def __init__(self, source: int, target: int) -> None:
        self.source = source
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=target)

    def convert(self, pcm: bytes) -> bytes:
        """Whole samples in; what the filter has ready out (it holds back a few)."""
        if not pcm:
            return b""
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = self.source
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(frame))

    def flush(self) -> bytes:
        """The rest, at the stream's end; the resampler is spent after it."""
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(None))
