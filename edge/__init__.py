"""Client-facing Starlette processes (WebSocket, WebRTC, REST)."""
