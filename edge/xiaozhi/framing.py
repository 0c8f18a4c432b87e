"""xiaozhi binary frames, by protocol version (DESIGN §5).

- v1: the message is one raw Opus packet.
- v2: a 16-byte big-endian header: u16 version, u16 type (0 Opus, 1 JSON), u32 reserved,
  u32 timestamp (ms), u32 payload size; then the payload.
- v3: a 4-byte header: u8 type, u8 reserved, u16 big-endian payload size; then the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSIONS = (1, 2, 3)
OPUS, JSON = 0, 1
_V2 = struct.Struct(">HHIII")
_V3 = struct.Struct(">BBH")


class FrameError(ValueError):
    """A binary message that does not follow the negotiated framing."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int  # OPUS or JSON
    payload: bytes
    timestamp: int = 0  # ms, v2 only


def unpack(version: int, data: bytes) -> Frame:
    if version == 1:
        if not data:
            raise FrameError("empty audio frame")
        return Frame(OPUS, data)
    if version == 2:
        if len(data) < _V2.size:
            raise FrameError(f"a v2 frame needs a {_V2.size}-byte header, got {len(data)} bytes")
        _, kind, _, timestamp, size = _V2.unpack_from(data)
        header = _V2.size
    elif version == 3:
        if len(data) < _V3.size:
            raise FrameError(f"a v3 frame needs a {_V3.size}-byte header, got {len(data)} bytes")
        kind, _, size = _V3.unpack_from(data)
        timestamp, header = 0, _V3.size
    else:
        raise FrameError(f"unknown protocol version {version}")
    if kind not in (OPUS, JSON):
        raise FrameError(f"unknown frame type {kind} (0 is Opus, 1 is JSON)")
    if size > len(data) - header:
        raise FrameError(f"the header says {size} payload bytes, the frame has {len(data) - header}")
    if size == 0:
        raise FrameError("empty payload")
    return Frame(kind, data[header:header + size], timestamp)


def pack(version: int, payload: bytes, timestamp: int = 0, kind: int = OPUS) -> bytes:
    if version == 1:
        return payload
    if version == 2:
        return _V2.pack(2, kind, 0, timestamp & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        if len(payload) > 0xFFFF:
            raise FrameError(f"a v3 payload is at most 65535 bytes, not {len(payload)}")
        return _V3.pack(kind, 0, len(payload)) + payload
    raise FrameError(f"unknown protocol version {version}")
