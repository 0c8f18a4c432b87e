"""Audio formats: decoding what clients send, encoding what they hear (PyAV, Opus)."""
