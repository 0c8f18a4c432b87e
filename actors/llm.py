"""Which OpenAI-compatible server answers, from the environment.

`OPENAI_BASE_URL` / `OPENAI_API_KEY` are the SDK's own variables, so any
OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's llama-server, …)
works without vagent-specific settings. Keys live in the environment, never in events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from openai import AsyncOpenAI

# llama.cpp's llama-server listens here by default: the offline stack's LLM.
LOCAL_BASE_URL = "http://127.0.0.1:8080/v1"
DEFAULT_SYSTEM_PROMPT = (
    "You are vagent, a friendly voice assistant. Answer in one to three short, "
    "spoken-style sentences."
)


@dataclass(frozen=True)
class LLMConfig:
    base_url: str
    api_key: str
    model: str
    system_prompt: str
    timeout: float
    provider: str

    @classmethod
    def from_env(cls) -> LLMConfig:
        base_url = os.environ.get("VAGENT_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL") \
            or LOCAL_BASE_URL
        return cls(
            base_url=base_url,
            # Local servers ignore the key, but the SDK insists on one.
            api_key=os.environ.get("VAGENT_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
            or "no-key",
            model=os.environ.get("VAGENT_LLM_MODEL", "local"),
            system_prompt=os.environ.get("VAGENT_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT),
            timeout=float(os.environ.get("VAGENT_LLM_TIMEOUT", "60")),
            provider=os.environ.get("VAGENT_LLM_PROVIDER", "openai-compatible"),
        )

    def client(self) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout,
                           max_retries=1)
