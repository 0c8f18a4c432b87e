"""A session's audio as one stereo WAV on the session's clock: what the user said on the
left, what the assistant said on the right, from the recordings the log points to."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audio.wavfile import write_wav
from bus.blobs import get_blob
from bus.client import Bus
from replay.log import MS, session_log
from schemas import (
    BlobRef,
    SpeechStarted,
    SpeechStopped,
    TtsStarted,
    TtsStopped,
    TurnPaused,
    TurnResumed,
)

RATE = 16000


@dataclass
class Exported:
    utterances: int  # the user's, on the left channel
    answers: int  # the assistant's spoken turns, on the right
    unrecorded: int  # spoken turns with no recording (older logs, or storing failed)
    duration_ms: int


def _resample(pcm: bytes, rate: int) -> bytes:
    if rate == RATE or not pcm:
        return pcm
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    n = int(len(samples) * RATE / rate)
    out = np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples)
    return out.astype("<i2").tobytes()


async def _clip(bus: Bus, ref: BlobRef) -> bytes | None:
    try:
        return _resample(await get_blob(bus, ref), ref.sample_rate)
    except Exception as exc:  # a blob removed from the bucket: say so, keep the rest
        print(f"warning: audio {ref.name} not readable: {exc}", file=sys.stderr)
        return None


def _track(clips: list[tuple[int, bytes]], length: int) -> Any:
    import numpy as np

    track = np.zeros(length, dtype="<i2")
    for start_ms, pcm in clips:
        samples = np.frombuffer(pcm, dtype="<i2")
        at = start_ms * RATE // 1000
        track[at:at + len(samples)] = samples[:max(0, length - at)]
    return track


async def export_wav(bus: Bus, session_id: str, path: Path) -> Exported:
    """A stereo 16 kHz WAV on the session's clock (0 = session.started): the user's utterances
    on the left, each ending where its speech ended (speech.started's time plus the speech's
    duration: the clip's pre-roll comes before); the assistant's answers on the right, each
    from its turn's tts.started, as recorded by the TTS (`tts.stopped`'s audio, cut where the
    listener stopped hearing it), silent where speech over it paused it (`turn.paused` to
    `turn.resumed`: the recording holds only what played)."""
    import numpy as np

    events = [e.event for e in await session_log(bus, session_id) if e.event is not None]
    origin = events[0].ts if events else 0

    def at_ms(ts: int) -> int:
        return max(0, (ts - origin) // MS)

    speech_at = {e.id: e.ts for e in events if isinstance(e, SpeechStarted)}
    speaking_at: dict[str | None, int] = {}
    paused_at: dict[str | None, int] = {}
    gaps: dict[str | None, list[tuple[int, int]]] = {}  # turn → (offset in its recording, ms)
    user: list[tuple[int, bytes]] = []
    assistant: list[tuple[int, bytes]] = []
    seen: set[str] = set()
    unrecorded = 0
    for event in events:
        if isinstance(event, TtsStarted):
            speaking_at[event.turn_id] = event.ts
        elif isinstance(event, TurnPaused):
            paused_at[event.turn_id] = event.ts
        elif (isinstance(event, TurnResumed) and event.turn_id in paused_at
              and event.turn_id in speaking_at):
            before = gaps.setdefault(event.turn_id, [])
            played = (at_ms(paused_at.pop(event.turn_id)) - at_ms(speaking_at[event.turn_id])
                      - sum(ms for _, ms in before))
            before.append((max(0, played), event.paused_ms))
        elif isinstance(event, TtsStopped) and event.turn_id in speaking_at and event.spoken_ms:
            pcm = await _clip(bus, event.audio) if event.audio is not None else None
            if pcm is None:
                unrecorded += 1
                continue
            start, cut = at_ms(speaking_at[event.turn_id]), 0
            for offset, paused_ms in gaps.get(event.turn_id, []):
                assistant.append((start + cut, pcm[cut * RATE // 500:offset * RATE // 500]))
                cut, start = max(cut, offset), start + paused_ms
            assistant.append((start + cut, pcm[cut * RATE // 500:]))
        elif (isinstance(event, SpeechStopped) and event.audio is not None
              and event.audio.name not in seen):
            seen.add(event.audio.name)
            pcm = await _clip(bus, event.audio)
            if pcm is None:
                continue
            begun = speech_at.get(event.causation_id or "")
            end_ms = at_ms(begun) + event.duration_ms if begun is not None else at_ms(event.ts)
            user.append((max(0, end_ms - len(pcm) * 1000 // (2 * RATE)), pcm))
    end_ms = max((start + len(pcm) * 1000 // (2 * RATE) for start, pcm in user + assistant),
                 default=0)
    length = end_ms * RATE // 1000 + 1
    stereo = np.stack([_track(user, length), _track(assistant, length)], axis=1)
    write_wav(path, stereo.astype("<i2").tobytes(), RATE, channels=2)
    return Exported(utterances=len(user), answers=len(assistant), unrecorded=unrecorded,
                    duration_ms=end_ms)
