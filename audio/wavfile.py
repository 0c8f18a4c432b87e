"""WAV files in and out: any WAV (any rate, channel count or sample format FFmpeg reads)
→ 16 kHz mono PCM16, the format VAD and ASR read; PCM16 → a WAV file."""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import BinaryIO

import av
import av.error

from audio.decode import RATE

MAX_FILE_BYTES = 256 * 1024 * 1024  # far beyond any utterance; decoding more is a mistake


class AudioFileError(ValueError):
    """A file that cannot be used as speech; the message says why, in one line."""


def read_wav(path: Path, max_seconds: float) -> bytes:
    """The WAV at `path` as 16 kHz mono PCM16 (downmixed and resampled as needed);
    AudioFileError if it is no readable WAV, holds no audio or lasts over `max_seconds`."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioFileError(f"{path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise AudioFileError(f"{path}: not a file")
    if size > MAX_FILE_BYTES:
        raise AudioFileError(f"{path}: {size} bytes is too big for an utterance")
    limit = int(max_seconds * RATE) * 2
    out = bytearray()
    try:
        # Forced to WAV: FFmpeg would otherwise guess a format for anything (text included).
        with av.open(str(path), format="wav") as container:
            if not container.streams.audio:
                raise AudioFileError(f"{path}: no audio in the file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in container.decode(stream):
                frame.pts = None  # the clock is the sample count, not the file's timestamps
                for chunk in resampler.resample(frame):
                    out += chunk.to_ndarray().tobytes()
                if len(out) > limit:
                    raise AudioFileError(f"{path}: longer than {max_seconds:g} s; "
                                         "say one utterance per file")
            for chunk in resampler.resample(None):
                out += chunk.to_ndarray().tobytes()
    except (av.error.FFmpegError, ValueError, EOFError) as exc:
        if isinstance(exc, AudioFileError):
            raise
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioFileError(f"{path}: not a readable WAV file ({reason})") from None
    if not out:
        raise AudioFileError(f"{path}: the WAV holds no audio")
    if len(out) > limit:
        raise AudioFileError(f"{path}: longer than {max_seconds:g} s; say one utterance per file")
    return bytes(out)


def write_wav(path: Path | BinaryIO, pcm: bytes, rate: int = RATE, channels: int = 1) -> None:
    """Interleaved PCM16 as a WAV file."""
    with wave.open(str(path) if isinstance(path, Path) else path, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


def wav_bytes(pcm: bytes, rate: int = RATE) -> bytes:
    """Mono PCM16 as the bytes of a WAV file (an upload's body)."""
    out = io.BytesIO()
    write_wav(out, pcm, rate)
    return out.getvalue()


class WavStream:
    """A 16-bit mono WAV arriving in pieces (a streamed HTTP body) → its PCM as it comes.
    Streaming servers cannot know the length up front, so the sizes in the header are not
    trusted: everything after the `data` chunk's header is audio."""

    MAX_HEADER = 64 * 1024

    def __init__(self) -> None:
        self.sample_rate: int | None = None  # known once the `fmt ` chunk is read
        self._head = b""
        self._in_data = False

    def feed(self, chunk: bytes) -> bytes:
        """The PCM in `chunk` (nothing while the header is still coming); AudioFileError
        for what is no 16-bit mono PCM WAV."""
        if self._in_data:
            return chunk
        self._head += chunk
        head = self._head
        if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
            raise AudioFileError("not a WAV stream")
        at = 12
        while len(head) >= at + 8:
            kind, size = head[at:at + 4], int.from_bytes(head[at + 4:at + 8], "little")
            if kind == b"data":
                if self.sample_rate is None:
                    raise AudioFileError("a WAV stream without its format before the audio")
                self._in_data, self._head = True, b""
                return head[at + 8:]
            if len(head) < at + 8 + size:
                break
            if kind == b"fmt ":
                self._format(head[at + 8:at + 8 + size])
            at += 8 + size + size % 2  # chunks are padded to even sizes
        if len(head) > self.MAX_HEADER:
            raise AudioFileError("a WAV header longer than 64 KB")
        return b""

    def _format(self, fmt: bytes) -> None:
        if len(fmt) < 16:
            raise AudioFileError("a WAV format chunk too short")
        tag = int.from_bytes(fmt[0:2], "little")
        channels = int.from_bytes(fmt[2:4], "little")
        bits = int.from_bytes(fmt[14:16], "little")
        # 1: PCM; 0xFFFE: WAVE_FORMAT_EXTENSIBLE, which such servers use for PCM too.
        if tag not in (1, 0xFFFE) or channels != 1 or bits != 16:
            raise AudioFileError(f"a WAV stream of {channels} channel(s), {bits}-bit, "
                                 f"format {tag:#x}: only 16-bit mono PCM is read")
        self.sample_rate = int.from_bytes(fmt[4:8], "little")
