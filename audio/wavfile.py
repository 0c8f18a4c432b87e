"""WAV files in and out: any WAV (any rate, channel count or sample format FFmpeg reads)
→ 16 kHz mono PCM16, the format VAD and ASR read; PCM16 → a WAV file."""

from __future__ import annotations

import wave
from pathlib import Path

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


def write_wav(path: Path, pcm: bytes, rate: int = RATE, channels: int = 1) -> None:
    """Interleaved PCM16 as a WAV file."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
