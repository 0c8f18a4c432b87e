"""WebRTC for browsers: HTTP signaling (`POST /webrtc/offer`), the microphone to
`audio.in`, the assistant's voice on an outbound audio track, and the session's events
on the data channel `events` (DESIGN §5)."""

from edge.webrtc.offer import ENDPOINTS

__all__ = ["ENDPOINTS"]
