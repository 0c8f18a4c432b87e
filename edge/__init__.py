"""Client-facing Starlette processes (WebSocket, WebRTC, REST): issues #5 and #6."""
