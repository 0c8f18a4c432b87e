"""The two audio paths of a browser peer.

Uplink: aiortc decodes the browser's Opus into `av.AudioFrame`s (s16, usually stereo,
48 kHz); they are resampled to 16 kHz mono PCM16 and published to `audio.in` in 20 ms
frames, the session's negotiated `audio_in` (`UPLINK`).

Downlink: the TTS actor sends `audio.out` as PCM16 mono 48 kHz in 20 ms frames
(`DOWNLINK`), paced at real time. aiortc pulls frames from the outbound track as fast
as `recv()` returns them, so `DownlinkTrack.recv()` keeps its own clock: one frame per
20 ms against `time.monotonic()`, silence whenever nothing is queued.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from schemas import AudioParams

log = logging.getLogger("vagent.edge.webrtc")

UPLINK = AudioParams(format="pcm16", sample_rate=16000, channels=1, frame_duration=20)
DOWNLINK = AudioParams(format="pcm16", sample_rate=48000, channels=1, frame_duration=20)
FRAME_S = 0.020
UPLINK_FRAME_BYTES = UPLINK.sample_rate * UPLINK.frame_duration // 1000 * 2  # 640
DOWNLINK_SAMPLES = DOWNLINK.sample_rate * DOWNLINK.frame_duration // 1000  # 960
DOWNLINK_FRAME_BYTES = DOWNLINK_SAMPLES * 2
MAX_QUEUED_S = 10.0  # downlink audio held at most (TTS leads by a few frames only)
RESYNC_S = 0.1  # the sender fell this far behind its clock (a stalled loop): start afresh


class DownlinkTrack(MediaStreamTrack):
    """The assistant's voice as an outbound audio track: PCM16 mono 48 kHz pushed in,
    20 ms `av.AudioFrame`s out at real time, silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._max = int(MAX_QUEUED_S / FRAME_S) * DOWNLINK_FRAME_BYTES
        self._start: float | None = None
        self._pts = 0
        self._time_base = fractions.Fraction(1, DOWNLINK.sample_rate)
        self.frames_out = 0  # frames with audio (not silence) handed to the sender

    def push(self, pcm: bytes) -> None:
        if len(self._pending) + len(pcm) > self._max:
            log.debug("downlink queue full: %d bytes dropped", len(pcm))
            return
        self._pending += pcm

    def flush(self) -> None:
        """An interrupted turn: what is queued is not said."""
        self._pending.clear()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._pts / DOWNLINK.sample_rate
            if due - now < -RESYNC_S:
                self._start = now - self._pts / DOWNLINK.sample_rate  # no burst to catch up
            elif due > now:
                await asyncio.sleep(due - now)
            if self.readyState != "live":
                raise MediaStreamError
        if len(self._pending) >= DOWNLINK_FRAME_BYTES:
            data = bytes(self._pending[:DOWNLINK_FRAME_BYTES])
            del self._pending[:DOWNLINK_FRAME_BYTES]
            self.frames_out += 1
        elif self._pending:  # a sentence's tail shorter than a frame: pad it
            data = bytes(self._pending) + bytes(DOWNLINK_FRAME_BYTES - len(self._pending))
            self._pending.clear()
            self.frames_out += 1
        else:
            data = bytes(DOWNLINK_FRAME_BYTES)
        frame = av.AudioFrame(format="s16", layout="mono", samples=DOWNLINK_SAMPLES)
        frame.planes[0].update(data)
        frame.pts = self._pts
        frame.sample_rate = DOWNLINK.sample_rate
        frame.time_base = self._time_base
        self._pts += DOWNLINK_SAMPLES
        return frame


class Uplink:
    """Reads the browser's track until it ends: 16 kHz mono PCM16 in 20 ms frames to `send`."""

    def __init__(self, track: MediaStreamTrack, send: Callable[[bytes], Awaitable[None]]) -> None:
        self.track = track
        self.send = send
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=UPLINK.sample_rate)
        self._pending = bytearray()
        self.frames_in = 0

    async def run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            # The clock here is the sample count: a PTS gap would make the resampler
            # insert silence, a jump backwards would confuse it.
            frame.pts = None
            for out in self._resampler.resample(frame):
                self._pending += out.to_ndarray().tobytes()
            while len(self._pending) >= UPLINK_FRAME_BYTES:
                chunk = bytes(self._pending[:UPLINK_FRAME_BYTES])
                del self._pending[:UPLINK_FRAME_BYTES]
                self.frames_in += 1
                try:
                    await self.send(chunk)
                except Exception as exc:  # NATS away: this frame is lost, the next may pass
                    log.debug("uplink frame dropped: %r", exc)
