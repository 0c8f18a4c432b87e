"""A supervised child process — the embedded nats-server, the local llama-server: stopped
cleanly (SIGTERM, then SIGKILL), and started again by `supervise()` if it dies.

Children are tied to vagent (crash-only): each runs in its own process group, so a
terminal's Ctrl-C reaches vagent alone (which then stops them in order), and the kernel
sends it SIGTERM when vagent dies, even by SIGKILL, so nothing is left holding a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, ClassVar

log = logging.getLogger("vagent.child")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGTERM when its parent dies (Linux).

    Without it a SIGKILLed `vagent up` would leave its nats-server and llama-server running,
    holding their ports (and ~600 MB for the model). The kernel ties this to the thread that
    forked, so start children from the main thread or a long-lived one (asyncio.to_thread's
    pool threads live until the loop closes).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(cmd: Sequence[str], *, stdout: int | IO[bytes] | None = subprocess.DEVNULL,
          stderr: int | IO[bytes] | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start a child the way every vagent child starts: in its own session (so its own
    process group: Ctrl-C in the terminal reaches vagent only, which lets in-flight work
    finish before it stops the child) and dying with vagent."""
    return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            start_new_session=True, preexec_fn=die_with_parent())


def process_cmdline(pid: int) -> list[str] | None:
    """A live process's argv, from /proc (None when it is gone or not readable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


def parent_pid(pid: int) -> int | None:
    """A live process's parent pid, from /proc/<pid>/stat (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


class ChildProcess:
    label: ClassVar[str]  # for the log
    check_every: ClassVar[float] = 1.0  # seconds between liveness checks
    retry_after: ClassVar[float] = 2.0  # seconds after a failed restart
    start_errors: ClassVar[tuple[type[Exception], ...]] = (Exception,)  # a failed start raises these

    log_file: Path

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False

    def start(self) -> object:
        raise NotImplementedError

    def before_restart(self) -> None:
        """Prepare a restart (e.g. clear what readiness is read from)."""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM lets the child flush and close its files; SIGKILL after `timeout`."""
        self._stopping = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def supervise(self, shutting_down: asyncio.Event | None = None) -> None:
        """Start the child again, as configured, whenever it dies (until `stop()`).

        Not once `shutting_down` is set: a child that exits while its parent stops (a
        service manager signals the whole group, say) is about to be stopped anyway, and
        starting it again would only delay the stop and report a crash that is none."""
        while not self._stopping:
            await asyncio.sleep(self.check_every)
            if self._stopping or self.running():
                continue
            if shutting_down is not None and shutting_down.is_set():
                log.info("%s exited (%s) while vagent stops; not restarted", self.label,
                         self.proc.returncode if self.proc else "?")
                return
            log.error("%s exited (%s); restarting (log: %s)", self.label,
                      self.proc.returncode if self.proc else "?", self.log_file)
            self.before_restart()
            restart = asyncio.ensure_future(asyncio.to_thread(self.start))
            try:
                await asyncio.shield(restart)
            except asyncio.CancelledError:
                # Cancelled mid-restart (vagent stops): the start's thread cannot be stopped,
                # so wait for it; `stop()` then stops the child it started instead of
                # missing it.
                with contextlib.suppress(Exception):
                    await restart
                raise
            except self.start_errors as exc:
                log.error("%s restart failed: %s", self.label, exc)
                await asyncio.sleep(self.retry_after)
