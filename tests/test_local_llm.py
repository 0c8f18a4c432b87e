"""The offline LLM: llama.cpp's real server (from the xllamacpp wheel, in a child process)
serving models that came from PyPI packages, driven through the real openai SDK."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from actors.dialogue.local_llm import MODELS, LocalLLMError, LocalLLMServer, model_file
from bus.server import free_port
from tests.procs import Proc, vagent

pytestmark = pytest.mark.slow


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One assembled Qwen file for the module, removed afterwards (pytest keeps old temp dirs)."""
    path = tmp_path_factory.mktemp("qwen")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def stream_text(base_url: str, model: str, prompt: str, max_tokens: int) -> tuple[list[str], str]:
    async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True,
            max_tokens=max_tokens, temperature=0)
        parts, answered_as = [], ""
        async for chunk in stream:
            answered_as = chunk.model or answered_as
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
    return parts, answered_as


def test_the_prebuilt_runtime_uses_this_cpus_simd() -> None:
    """The wheel is built without -march=native: it must still pick AVX2 where the CPU has it."""
    done = subprocess.run([sys.executable, "-c", "import xllamacpp; print(xllamacpp.get_system_info())"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    cpu_flags = Path("/proc/cpuinfo").read_text().split()
    if "avx2" in cpu_flags:
        assert "AVX2 = 1" in done.stdout


async def test_smollm_streams_through_the_openai_sdk(tmp_path: Path) -> None:
    server = LocalLLMServer("smollm2-135m", tmp_path, max_tokens=6)
    base_url = await asyncio.to_thread(server.start, 60)
    try:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert server.running()
        parts, answered_as = await stream_text(base_url, server.model_name, "Say hello.", 16)
        assert len(parts) > 1, "the answer arrives as a stream of deltas"
        assert "".join(parts).strip()
        assert answered_as == "smollm2-135m-instruct-q4_1"
        async with AsyncOpenAI(base_url=base_url, api_key="unused") as client:
            capped = await client.chat.completions.create(  # no max_tokens: the server's cap
                model=server.model_name, messages=[{"role": "user", "content": "Tell a long story."}])
        assert capped.usage and capped.usage.completion_tokens <= 6
        assert capped.choices[0].finish_reason == "length"
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.running()
    assert "serving smollm2-135m-instruct-q4_1 at http://127.0.0.1:" in (
        tmp_path / "llama-server.log").read_text()


def test_corrupt_cached_model_is_rebuilt(tmp_path: Path) -> None:
    pinned = MODELS["smollm2-135m"]
    path = model_file("smollm2-135m", tmp_path)
    assert path.parent == tmp_path / "models"
    assert sha256(path) == pinned.sha256

    stages: list[str] = []
    path.write_bytes(b"garbage")  # wrong size
    assert model_file("smollm2-135m", tmp_path, lambda label, _: stages.append(label)) == path
    assert sha256(path) == pinned.sha256
    assert any(s.startswith("assembling") for s in stages)

    with path.open("r+b") as f:  # right size, one byte flipped: only the hash can tell
        f.seek(pinned.size // 2)
        byte = f.read(1)
        f.seek(pinned.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert model_file("smollm2-135m", tmp_path) == path
    assert sha256(path) == pinned.sha256

    stages.clear()
    mtime = path.stat().st_mtime_ns
    model_file("smollm2-135m", tmp_path, lambda label, _: stages.append(label))
    assert path.stat().st_mtime_ns == mtime, "a good cached file is not rewritten"
    assert stages and all(s.startswith("verifying") for s in stages)
    assert not list(path.parent.glob(".*.tmp")), "no temporary file is left behind"


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalLLMError, match="unknown local model"):
        model_file("gpt-5", tmp_path)


def test_qwen_parts_assemble_to_the_pinned_file(qwen_dir: Path) -> None:
    path = model_file("qwen2.5-0.5b", qwen_dir)
    assert path.stat().st_size == MODELS["qwen2.5-0.5b"].size
    assert sha256(path) == MODELS["qwen2.5-0.5b"].sha256
    assert path.read_bytes()[:4] == b"GGUF"


async def test_qwen_default_model_answers(qwen_dir: Path) -> None:
    """The production default, end to end (a few tokens: it is the slower model)."""
    server = LocalLLMServer("qwen2.5-0.5b", qwen_dir)
    base_url = await asyncio.to_thread(server.start, 90)
    try:
        parts, answered_as = await stream_text(base_url, server.model_name,
                                               "What is the capital of France? One word.", 8)
        assert "paris" in "".join(parts).lower()
        assert answered_as == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    finally:
        await asyncio.to_thread(server.stop)


def _llama_server_pids(port: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"actors.dialogue.local_llm_serve" in cmdline and str(port).encode() in cmdline:
            pids.append(int(entry))
    return pids


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_vagent_up_runs_the_local_llm_when_no_provider_is_configured(tmp_path: Path) -> None:
    config = tmp_path / "vagent.toml"
    config.write_text('[llm]\nlocal_model = "smollm2-135m"\n')
    data = tmp_path / "data"
    for stop in ("interrupt", "crash"):
        port = free_port()
        proc = Proc(["up", "--port", str(port), "--data-dir", str(data), "--edge-port", str(free_port())],
                    VAGENT_CONFIG=str(config))
        try:
            line = proc.wait_for("(local llama-server")
            base_url = line.split()[1]
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as resp:
                served = [m["id"] for m in json.load(resp)["data"]]
            assert served == ["smollm2-135m-instruct-q4_1"]
            pids = _llama_server_pids(int(base_url.rsplit(":", 1)[1].split("/")[0]))
            assert len(pids) == 1
            if stop == "interrupt":  # a streamed reply from the local model arrives through the bus
                nats = f"nats://127.0.0.1:{port}"
                said = vagent("say", "Say hello.", "-s", "local1", "--nats", nats, "--timeout", "90")
                assert said.returncode == 0, said.stderr
                assert said.stdout.strip()
                final = vagent("tail", "vagent.session.local1.evt.assistant.message", "--from-start",
                               "--json", "--limit", "1", "--nats", nats)
                message = json.loads(final.stdout)
                assert message["provider"] == "local"
                assert message["model"] == "smollm2-135m-instruct-q4_1"
                assert message["text"].strip() == said.stdout.strip()
                assert message["usage"]["completion_tokens"] <= 256
            if stop == "crash":  # SIGKILL: vagent cannot clean up; the kernel tells the child
                proc.kill()
            else:  # a terminal's Ctrl-C reaches the whole process group; vagent stops the child
                os.killpg(proc.proc.pid, signal.SIGINT)
                assert proc.proc.wait(60) == 0
                output = proc.output()
                assert "restarting" not in output and "ERROR" not in output, output
            assert _gone(pids), f"llama-server outlived vagent up ({stop})"
        finally:
            proc.stop()
    # The second run found the model already assembled.
    assert "assembling" not in proc.output()
