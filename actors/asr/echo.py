"""The assistant's own voice, taken back out of what the client's microphone heard.

A client that does not cancel echo (a speaker device whose firmware has no AEC) hears the
assistant through its own speaker; left in, that echo opens utterances and barges in on
the assistant. The TTS sends the session's outbound audio on `audio.out`: that is the
reference, and WebRTC's echo canceller (AEC3, from the `pywebrtc-audio` wheel) subtracts
its echo from the inbound audio before the VAD sees it.

Alignment: the client plays frames as they arrive, back to back at real time, so a frame
plays from max(its arrival, the previous frame's end): that puts each reference sample on
the wall clock. An inbound chunk of `n` samples that arrived at `t` is taken to cover the wall
time just before `t`, the chunks running on back to back unless `REANCHOR_S` off their
arrival, and the canceller is given the reference of that same span. A busy event loop hears
both streams late, in bursts: how late the inbound chunk is heard is taken off the arrival of
the assistant's frames heard with it, and a frame less than `RESYNC_S` behind the one before
plays right after it.
What this misses (the client's playback buffer, speaker to microphone, the uplink) only
delays the echo behind its reference, which AEC3's own delay estimator finds (measured
here: converged for delays of 50–500 ms; docs/sessions.md).

Whether there is any echo: AEC3 that never finds an echo keeps assuming one, and then damps
the user's voice whenever the assistant's plays (measured: parts of a sentence 30–50 dB down,
a barge-in heard 1.5 s late), as with a client that cancels echo without saying so, or a
headset. So `EchoPath` watches whether the microphone's loudness follows the reference's,
10 ms frame by frame at some delay within half a second: an echo does (correlation 0.85–0.96
measured, down to an echo 30 dB under the reference), the user and room noise do not (0.1–0.3).
Until that is known (the first seconds of the assistant's voice in a session), and once an
echo was heard, the canceller's output is used; after the assistant's voice played a while with
none, the inbound audio passes as it came (the canceller keeps running, ready should an echo
appear).

Cost: the canceller runs only while reference audio is pending or played within the last
`TAIL_S` (the echo and its reverberation are still coming back); otherwise inbound audio
passes untouched, and a session that never hears the assistant never makes a canceller.
"""

from __future__ import annotations

import collections
import logging

import numpy as np
from pywebrtc_audio import EchoCanceller

from audio.decode import RATE, AudioDecodeError, Decoder
from schemas import AudioParams

log = logging.getLogger("vagent.asr")

FRAME = RATE // 100  # AEC3 works on 10 ms frames
FRAME_BYTES = FRAME * 2
TAIL_S = 1.0  # after the last reference sample played: the echo's delay and reverberation
RESYNC_S = 0.25  # a reference frame this late after the one before: a gap in the sound
# Inbound audio this far off its expected time is re-anchored (the client paused its microphone);
# less is this process's delay in hearing it (a busy event loop, a burst after it).
REANCHOR_S = 1.0
MAX_TAPE_S = 10.0  # reference kept ahead of the inbound audio, at most
PENDING_FRAMES = 1000  # outbound frames waiting to be placed (inbound audio stopped meanwhile)
ECHO_LAGS = range(0, 52, 2)  # frames (10 ms) the echo may lag its placed reference
WINDOW = 400  # frames of the assistant's voice the echo path is judged on
JUDGE_AFTER = 150  # frames of it before "no echo" may be said
HEARD, NOT_HEARD = 0.6, 0.4  # correlation of loudness: an echo; none
LOUD_DB = 10 * np.log10((32768 * 10 ** (-50 / 20)) ** 2)  # a reference frame above -50 dBFS


def wanted(setting: str, client_cancels: bool | None) -> bool:
    """Whether a session's inbound audio needs the assistant's echo taken out: `on`, `off`,
    or `auto`: unless the client says it cancels echo itself."""
    if setting == "auto":
        return client_cancels is not True
    return setting == "on"


class EchoRemover:
    """One session's canceller. `played` is called on the event loop for each outbound frame;
    `cancel`, on one worker thread at a time, for each inbound chunk (16 kHz mono PCM16)."""

    def __init__(self, out: AudioParams) -> None:
        self.out = out
        self._pending: collections.deque[tuple[float, bytes]] = collections.deque(
            maxlen=PENDING_FRAMES)  # thread-safe appends and pops: no lock needed
        self._decoder: Decoder | None = None
        self._tape = bytearray()  # reference, 16 kHz PCM16, from wall time _tape_at on
        self._tape_at = 0.0
        self._played_until = float("-inf")  # wall time the last reference sample finished
        self._cursor: float | None = None  # wall time of the next inbound sample
        self._aec: EchoCanceller | None = None  # made on first use
        self._near = b""  # under one 10 ms frame, held for the next chunk
        self._far = b""
        self.path = EchoPath()
        self.frames = 0  # 10 ms frames through the canceller

    def played(self, payload: bytes, arrived: float) -> None:
        """An outbound frame (the session's `audio_out` format) reached the client at `arrived`
        (monotonic seconds)."""
        self._pending.append((arrived, payload))

    def cancel(self, pcm: bytes, arrived: float) -> bytes:
        """Inbound audio that arrived at `arrived`, with the assistant's echo taken out. It may
        come back up to 10 ms shorter or longer: the canceller works on whole frames."""
        span = len(pcm) // 2 / RATE
        expected = arrived - span
        if self._cursor is None or abs(self._cursor - expected) > REANCHOR_S:
            self._cursor = expected
        # How late this process hears inbound audio now (a busy event loop, a burst after it):
        # the assistant's frames of the same moment were heard as late, and are placed back.
        self._place_pending(max(0.0, expected - self._cursor))
        start = self._cursor
        self._cursor += span
        reference = self._read(start, len(pcm) // 2)
        if start >= self._played_until + TAIL_S and not self._near:
            return pcm  # nothing of the assistant to hear: no cost
        if start >= self._played_until + TAIL_S:
            near, self._near, self._far = self._near + pcm, b"", b""
            return near  # the tail is over: what was held goes out as it is
        near = self._near + pcm
        far = self._far + reference
        whole = len(near) // FRAME_BYTES * FRAME_BYTES
        self._near, self._far = near[whole:], far[whole:]
        if not whole:
            return b""
        if self._aec is None:
            self._aec = EchoCanceller(sample_rate=RATE)
        mic = np.frombuffer(near[:whole], np.int16)
        speaker = np.frombuffer(far[:whole], np.int16)
        cleaned = self._aec.process(mic, speaker)
        self.frames += whole // FRAME_BYTES
        self.path.feed(mic, speaker)
        return (mic if self.path.echo is False else cleaned).tobytes()

    def _place_pending(self, late: float) -> None:
        while self._pending:
            arrived, payload = self._pending.popleft()
            if self._decoder is None:
                self._decoder = Decoder(self.out.format, self.out.sample_rate, self.out.channels)
            try:
                pcm = self._decoder.decode(payload)
            except AudioDecodeError as exc:  # one bad frame: its echo stays in, the rest not
                log.debug("reference frame not decoded: %s", exc)
                continue
            self._place(pcm, arrived - late)

    def _place(self, pcm: bytes, arrived: float) -> None:
        end = self._played_until  # where the tape ends: reading never drops past it
        if arrived > end + TAIL_S:
            self._tape = bytearray(pcm)  # a new stretch of speech starts where it arrives
            self._tape_at = arrived
        else:
            if arrived > end + RESYNC_S:  # a gap in the sound: silence on the tape
                self._tape += bytes(round((arrived - end) * RATE) * 2)
            # Late by less: taken as this process's own delay in hearing it (a busy event loop
            # stamps a burst of frames at once), and the frame plays once what was before it
            # has. Were the client's sound really late, the echo only lags its reference more,
            # which the canceller follows.
            self._tape += pcm
        excess = len(self._tape) - round(MAX_TAPE_S * RATE) * 2
        if excess > 0:
            del self._tape[:excess]
            self._tape_at += excess / 2 / RATE
        self._played_until = self._tape_at + len(self._tape) / 2 / RATE

    def _read(self, start: float, samples: int) -> bytes:
        """The reference from wall time `start` on (silence where none played); what lies before
        the span's end is dropped: inbound audio only moves on."""
        offset = round((start - self._tape_at) * RATE)
        out = bytearray(samples * 2)
        lo, hi = max(offset, 0), min(offset + samples, len(self._tape) // 2)
        if hi > lo:
            out[(lo - offset) * 2:(hi - offset) * 2] = self._tape[lo * 2:hi * 2]
        drop = min(max(offset + samples, 0), len(self._tape) // 2)
        if drop:
            del self._tape[:drop * 2]
            self._tape_at += drop / RATE
        return bytes(out)


def frame_db(samples: np.ndarray) -> np.ndarray:
    """Each 10 ms frame's power, dB (of PCM16 units; +1 keeps digital silence finite)."""
    frames = samples[:len(samples) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return np.asarray(10 * np.log10(np.mean(frames ** 2, axis=1) + 1.0))


class EchoPath:
    """Whether the microphone hears the speaker at all: `echo` is True once its loudness was
    seen following the reference's, False once the reference played a while without that,
    None until then."""

    def __init__(self) -> None:
        self.echo: bool | None = None
        self._mic: collections.deque[float] = collections.deque(maxlen=WINDOW + ECHO_LAGS[-1])
        self._ref: collections.deque[float] = collections.deque(maxlen=WINDOW + ECHO_LAGS[-1])
        self._loud = 0  # frames of the window where the assistant's voice could be echoing
        self._fed = 0

    def feed(self, mic: np.ndarray, reference: np.ndarray) -> None:
        if self.echo:
            return  # a speaker heard stays heard: the room does not change within a session
        self._mic.extend(frame_db(mic))
        self._ref.extend(frame_db(reference))
        self._fed += len(mic) // FRAME
        if self._fed >= 10:  # judged every 100 ms or so: cheap, and soon enough
            self._fed = 0
            self._judge()

    def _judge(self) -> None:
        mic, ref = np.array(self._mic), np.array(self._ref)
        lag_max = ECHO_LAGS[-1]
        if len(mic) <= lag_max:
            return
        # Frames that may hold an echo: the reference was loud within the lags before them.
        recent = np.lib.stride_tricks.sliding_window_view(ref, lag_max + 1).max(axis=1)
        loud = recent >= LOUD_DB
        heard = mic[lag_max:]
        if loud.sum() < JUDGE_AFTER // 3:
            return
        best = -1.0
        for lag in ECHO_LAGS:
            a, b = heard[loud], ref[lag_max - lag:len(ref) - lag][loud]
            if a.std() > 0.5 and b.std() > 0.5:
                best = max(best, float(np.corrcoef(a, b)[0, 1]))
        if best >= HEARD:
            self.echo = True
        elif best < NOT_HEARD and loud.sum() >= JUDGE_AFTER:
            self.echo = False
        elif self.echo is False and best >= NOT_HEARD:
            self.echo = None  # something like an echo after all: cancel until it is clear
