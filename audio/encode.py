"""PCM16 in, the frames a client negotiated out: Opus packets or raw PCM16 chunks.

One `AudioEncoder` per spoken turn. Speech arrives in segments (sentences); each
`end_segment()` pads the last partial frame with silence, so a sentence's tail is sent
at once instead of waiting inside the encoder for the next sentence, and every segment
starts on a frame boundary (offsets into the turn's audio are whole frames).

The Opus encoder stays open across segments: a fresh one per sentence would restart
libopus' look-ahead and add a click at each boundary.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from schemas import AudioParams

OPUS_RATES = frozenset({8000, 12000, 16000, 24000, 48000})
OPUS_FRAME_MS = frozenset({5, 10, 20, 40, 60, 80, 100, 120})
DEFAULT_OUT = AudioParams(format="opus", sample_rate=24000, channels=1, frame_duration=60)
DEFAULT_BITRATE = 32000  # plenty for mono speech at 24 kHz


def check_params(params: AudioParams) -> None:
    """Raise ValueError for parameters no encoder here can produce."""
    if params.channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, not {params.channels}")
    if params.frame_duration <= 0 or params.sample_rate <= 0:
        raise ValueError("sample_rate and frame_duration must be positive")
    if params.format == "opus":
        if params.sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus cannot run at {params.sample_rate} Hz; "
                             f"use one of {sorted(OPUS_RATES)}")
        if params.frame_duration not in OPUS_FRAME_MS:
            raise ValueError(f"Opus frames of {params.frame_duration} ms are not possible; "
                             f"use one of {sorted(OPUS_FRAME_MS)}")
    elif (params.sample_rate * params.frame_duration) % 1000:
        raise ValueError(f"{params.frame_duration} ms is not a whole number of samples "
                         f"at {params.sample_rate} Hz")


class AudioEncoder:
    """Streaming PCM16 mono (any rate) → frames of `params`; not thread-safe, but it may be
    called from one worker thread at a time (the encoding is CPU work kept off the loop)."""

    def __init__(self, params: AudioParams = DEFAULT_OUT, *, bitrate: int = DEFAULT_BITRATE) -> None:
        check_params(params)
        self.params = params
        self.frame_ms = params.frame_duration
        self.frame_samples = params.sample_rate * params.frame_duration // 1000
        self._layout = "mono" if params.channels == 1 else "stereo"
        self._frame_bytes = self.frame_samples * 2 * params.channels
        self._pending = bytearray()  # target-format samples not yet a whole frame
        self._resampler: av.AudioResampler | None = None
        self._in_rate = 0
        self._pts = 0
        self._opus: av.AudioCodecContext | None = None
        if params.format == "opus":
            codec = av.CodecContext.create("libopus", "w")
            codec.sample_rate = params.sample_rate
            codec.layout = self._layout
            codec.format = "s16"
            codec.bit_rate = bitrate
            codec.time_base = Fraction(1, params.sample_rate)
            codec.options = {"frame_duration": str(params.frame_duration), "application": "audio"}
            codec.open()
            self._opus = codec

    def encode(self, pcm: bytes, sample_rate: int) -> list[bytes]:
        """Feed PCM16 mono at `sample_rate`; returns the frames completed so far."""
        if len(pcm) % 2:
            raise ValueError("PCM16 needs an even number of bytes")
        if not pcm:
            return []
        if sample_rate != self._in_rate:
            self._flush_resampler()  # a new rate mid-segment: finish the old one first
            self._in_rate = sample_rate
        if sample_rate == self.params.sample_rate and self.params.channels == 1:
            self._pending += pcm
        else:
            if self._resampler is None:
                self._resampler = av.AudioResampler(format="s16", layout=self._layout,
                                                    rate=self.params.sample_rate)
            frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16).reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate = sample_rate
            for out in self._resampler.resample(frame):
                self._pending += out.to_ndarray().tobytes()
        return self._drain()

    def end_segment(self) -> list[bytes]:
        """The rest of the segment, its last frame padded with silence."""
        self._flush_resampler()
        self._in_rate = 0
        # What the resampler held back may complete a frame and start another: pad the last.
        self._pending += bytes(-len(self._pending) % self._frame_bytes)
        return self._drain()

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            # A flushed resampler is spent (PyAV raises EOFError after it): the next
            # segment gets a new one.
            for out in self._resampler.resample(None):
                self._pending += out.to_ndarray().tobytes()
            self._resampler = None

    def _drain(self) -> list[bytes]:
        frames = []
        while len(self._pending) >= self._frame_bytes:
            raw = bytes(self._pending[:self._frame_bytes])
            del self._pending[:self._frame_bytes]
            frames.extend(self._encode_frame(raw))
        return frames

    def _encode_frame(self, raw: bytes) -> list[bytes]:
        if self._opus is None:
            return [raw]
        frame = av.AudioFrame.from_ndarray(np.frombuffer(raw, np.int16).reshape(1, -1),
                                           format="s16", layout=self._layout)
        frame.sample_rate = self.params.sample_rate
        frame.pts = self._pts
        self._pts += self.frame_samples
        return [bytes(packet) for packet in self._opus.encode(frame)]


def resample(pcm: bytes, rate: int, to_rate: int) -> bytes:
    """PCM16 mono at `rate` → at `to_rate`, whole."""
    if rate == to_rate or not pcm:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().tobytes() for f in (*resampler.resample(frame), *resampler.resample(None))]
    return b"".join(out)
