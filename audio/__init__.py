"""Audio formats: decoding what clients send, encoding what they hear (PyAV, Opus).

Pure media code below both the actors and the edge, so either can use it without
importing the other; it touches no NATS."""
