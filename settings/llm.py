"""Which LLM providers answer, in order.

1. `[[llm.providers]]` in vagent.toml: an explicit chain.
2. Else `OPENAI_BASE_URL` (the SDK's own variable; or `VAGENT_LLM_BASE_URL`) with
   `OPENAI_API_KEY` and `VAGENT_LLM_MODEL`: one provider.
3. Else the offline default: a local llama-server at `VAGENT_LOCAL_LLM_URL`, or
   llama.cpp's default address for a standalone actor. `vagent up` starts one and puts it
   in the providers it hands the actors (`local_provider`).
"""

from __future__ import annotations

import os

import msgspec

from settings.config import Config, ProviderConfig

LOCAL_BASE_URL = "http://127.0.0.1:8080/v1"
# Any of these names a provider, or a local model already served: none is started then.
LOCAL_LLM_OVERRIDES = ("VAGENT_LLM_BASE_URL", "OPENAI_BASE_URL", "VAGENT_LOCAL_LLM_URL")


def provider_configs(config: Config) -> list[ProviderConfig]:
    if config.llm.providers:
        return list(config.llm.providers)
    base_url = os.environ.get("VAGENT_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if base_url:
        return [openai_provider(base_url)]
    return [local_provider(os.environ.get("VAGENT_LOCAL_LLM_URL", LOCAL_BASE_URL))]


def openai_provider(base_url: str) -> ProviderConfig:
    """The one provider the environment names (the OpenAI SDK's own variables)."""
    key_env = "VAGENT_LLM_API_KEY" if "VAGENT_LLM_API_KEY" in os.environ else "OPENAI_API_KEY"
    return ProviderConfig(name=os.environ.get("VAGENT_LLM_PROVIDER", "openai"),
                          base_url=base_url, api_key_env=key_env,
                          model=os.environ.get("VAGENT_LLM_MODEL", "gpt-4o-mini"))


def local_provider(base_url: str, model: str | None = None) -> ProviderConfig:
    """A local llama-server: slower to its first token, and kept short."""
    return ProviderConfig(name="local", base_url=base_url,
                          model=model or os.environ.get("VAGENT_LLM_MODEL", "local"),
                          first_token_timeout=60.0, max_tokens=256, tool_probe=True)


def with_local_llm(config: Config, base_url: str) -> Config:
    """The settings with the local llama-server at `base_url` as the one provider: what
    `vagent up` hands its actors once it started one (and a replay of its sessions uses)."""
    return msgspec.structs.replace(config, llm=msgspec.structs.replace(
        config.llm, providers=[local_provider(base_url)]))


def wants_local_llm(config: Config, actors: list[str]) -> bool:
    """Whether `vagent up` with these actors starts the local model: the offline default, no
    provider configured anywhere (in the settings or the environment)."""
    if "dialogue" not in actors or config.llm.providers:
        return False
    return not any(os.environ.get(name) for name in LOCAL_LLM_OVERRIDES)
