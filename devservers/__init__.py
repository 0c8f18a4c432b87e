"""Servers for development and tests: an OpenAI-compatible echo LLM and a threaded uvicorn host."""
