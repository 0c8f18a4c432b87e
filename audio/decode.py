"""Inbound audio → 16 kHz mono PCM16, the one format VAD and ASR read.

One `Decoder` per session stream: Opus keeps state between packets (it conceals
losses from the packets before), and so does the resampler (its filter spans frames).
Devices send Opus at 16 kHz in 60 ms frames, browsers Opus at 48 kHz; the Opus
decoder always yields 48 kHz whatever was encoded, so everything is resampled.
"""

from __future__ import annotations

import av
import av.error
import numpy as np

RATE = 16000  # what the decoder yields: 16 kHz mono signed 16-bit little endian
FORMATS = ("opus", "pcm16")
MAX_PACKET = 64 * 1024  # far above any real frame; a bigger one is a client bug


class AudioDecodeError(ValueError):
    """A frame that cannot be decoded; the stream itself stays usable."""


class Decoder:
    def __init__(self, fmt: str = "opus", sample_rate: int = RATE, channels: int = 1) -> None:
        if fmt not in FORMATS:
            raise AudioDecodeError(f"unsupported audio format {fmt!r}; expected one of {FORMATS}")
        if channels not in (1, 2):
            raise AudioDecodeError(f"unsupported channel count {channels}")
        if sample_rate <= 0:
            raise AudioDecodeError(f"invalid sample rate {sample_rate}")
        self.format = fmt
        self.sample_rate = sample_rate
        self.channels = channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._codec: av.AudioCodecContext | None = None
        if fmt == "opus":
            codec = av.CodecContext.create("libopus", "r")
            # Without extradata libopus would upmix to stereo; say what the client sends.
            codec.layout = self._layout
            codec.sample_rate = 48000
            self._codec = codec
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self.samples_in = 0  # 16 kHz samples produced so far: the session's audio clock

    def decode(self, payload: bytes) -> bytes:
        """One frame from the client → 16 kHz mono PCM16 (may be empty while the resampler fills)."""
        if not payload:
            # An empty packet is FFmpeg's end-of-stream signal: it would close the decoder.
            raise AudioDecodeError("empty audio frame")
        if len(payload) > MAX_PACKET:
            raise AudioDecodeError(f"audio frame of {len(payload)} bytes exceeds {MAX_PACKET}")
        frames = self._opus(payload) if self._codec is not None else [self._pcm(payload)]
        out = b"".join(self._resample(f) for f in frames)
        self.samples_in += len(out) // 2
        return out

    def flush(self) -> bytes:
        """What the resampler still holds, at the end of the stream."""
        out = b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(None))
        self.samples_in += len(out) // 2
        return out

    def _opus(self, payload: bytes) -> list[av.AudioFrame]:
        assert self._codec is not None
        try:
            return list(self._codec.decode(av.Packet(payload)))
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioDecodeError(f"bad Opus packet ({len(payload)} bytes): {exc}") from None

    def _pcm(self, payload: bytes) -> av.AudioFrame:
        width = 2 * self.channels
        if len(payload) % width:
            raise AudioDecodeError(f"PCM16 frame of {len(payload)} bytes is not a whole number of "
                                   f"{self.channels}-channel samples")
        samples = np.frombuffer(payload, dtype="<i2").reshape(1, -1)  # packed: one plane
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=self._layout)
        frame.sample_rate = self.sample_rate
        return frame

    def _resample(self, frame: av.AudioFrame) -> bytes:
        if frame.sample_rate == RATE and frame.layout.name == "mono" and frame.format.name == "s16":
            return frame.to_ndarray().tobytes()
        # PTS would make the resampler insert silence for gaps; the clock here is sample count.
        frame.pts = None
        return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))
