"""The LLMs of an evaluation: the one the assistant answers with, and the judge.

Each is named as a suite or the command names it: `default` (the configured chain, or
the local model when none is configured, as `vagent up` would run it), `echo` (the echo
server, started here), `local` (the bundled model served by llama-server, started here)
or an OpenAI-compatible base URL. A server started for one is shared with the other and
stopped when the evaluation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

import msgspec
import openai
from openai import AsyncOpenAI

from actors.dialogue.local_llm import LocalLLMError, LocalLLMServer
from devservers.echo_llm import OpenAIServer
from replay.engine import replay_providers
from settings.config import Config, ProviderConfig, secret
from settings.llm import local_provider, provider_configs, wants_local_llm

JUDGE_SYSTEM = ("You grade a voice assistant's answer against a criterion. Reply with one word: "
                "yes if the answer meets the criterion, no if it does not.")


class EvalLLMError(Exception):
    pass


class Servers:
    """LLM servers started for an evaluation, each once, stopped by `close`."""

    def __init__(self, config: Config, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir  # where the local model is assembled (once, then reused)
        self._echo: OpenAIServer | None = None
        self._local: dict[str, LocalLLMServer] = {}
        self._logs: Path | None = None

    def echo(self) -> ProviderConfig:
        if self._echo is None:
            self._echo = OpenAIServer().start()
        return ProviderConfig(name="echo", base_url=self._echo.base_url, model="echo")

    async def local(self, model: str | None) -> ProviderConfig:
        key = model or self.config.llm.local_model
        if key not in self._local:
            server = LocalLLMServer(key, self.cache_dir)
            # Its log of its own: a running `vagent up` may be logging to the data directory's.
            self._logs = self._logs or Path(tempfile.mkdtemp(prefix="vagent-eval-llm-"))
            server.log_file = self._logs / f"llama-server-{key}.log"
            try:
                await asyncio.to_thread(server.start)
            except LocalLLMError as exc:
                raise EvalLLMError(f"the local model did not start: {exc}") from None
            self._local[key] = server
        server = self._local[key]
        return local_provider(server.base_url, server.model_name)

    async def providers(self, kind: str, url: str | None, model: str | None) -> list[ProviderConfig] | None:
        """The chain the assistant answers with (None: the configured one, unchanged)."""
        if kind == "echo":
            return [self.echo()]
        if kind == "local" or (kind == "default" and wants_local_llm(self.config, ["dialogue"])):
            return [await self.local(model)]
        if kind == "url":
            return replay_providers(self.config, url, model, "eval")
        return replay_providers(self.config, None, model)

    async def judge(self, name: str | None, model: str | None) -> ProviderConfig | None:
        """The judge named on the command line, else the configured chain's first provider.
        None when nothing is configured, or only the bundled model: a small local model is a
        poor judge, so it judges only when asked (`--judge-llm local`)."""
        if name is None:
            if wants_local_llm(self.config, ["dialogue"]):
                return None
            first = provider_configs(self.config)[0]
            if first.name == local_provider(first.base_url).name:
                return None
            return msgspec.structs.replace(first, model=model) if model else first
        if name.startswith(("http://", "https://")):
            chain = replay_providers(self.config, name, model, "judge")
            assert chain is not None
            return chain[0]
        if name == "echo":
            return self.echo()
        if name == "local":
            return await self.local(model)
        raise EvalLLMError(f"--judge-llm {name}: echo, local or an OpenAI-compatible base URL")

    async def close(self) -> None:
        if self._echo is not None:
            self._echo.stop()
        for server in self._local.values():
            await asyncio.to_thread(server.stop)
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)


class JudgeLLM:
    """Yes-or-no questions about an answer, asked of one provider."""

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider
        self.client = AsyncOpenAI(base_url=provider.base_url,
                                  api_key=secret(provider.api_key_env) or "no-key",
                                  timeout=provider.timeout, max_retries=1)

    @property
    def name(self) -> str:
        return f"{self.provider.name} {self.provider.model} at {self.provider.base_url}"

    async def ask(self, criterion: str, said: str, answer: str) -> tuple[bool | None, str]:
        """(met, the judge's words): None when the judge said neither yes nor no."""
        question = (f"Criterion: {criterion}\n\nThe user said: {said}\n"
                    f"The assistant answered: {answer}\n\nDoes the answer meet the criterion? "
                    "Reply yes or no.")
        try:
            reply = await self.client.chat.completions.create(
                model=self.provider.model, temperature=0, max_tokens=8,
                messages=[{"role": "system", "content": JUDGE_SYSTEM},
                          {"role": "user", "content": question}])
        except openai.APIError as exc:
            return None, f"the judge failed: {exc}"
        words = (reply.choices[0].message.content or "").strip() if reply.choices else ""
        first = words.lower().lstrip("*\"' ").split(maxsplit=1)[0].strip(".,!:;*\"'") if words else ""
        if first in ("yes", "no"):
            return first == "yes", words
        return None, f"the judge said neither yes nor no: {words!r}"

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
