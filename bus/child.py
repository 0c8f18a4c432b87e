"""A supervised child process — the embedded nats-server, the local llama-server: stopped
cleanly (SIGTERM, then SIGKILL), and started again by `supervise()` if it dies."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import ClassVar

log = logging.getLogger("vagent.child")


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

    async def supervise(self) -> None:
        """Start the child again, as configured, whenever it dies (until `stop()`)."""
        while not self._stopping:
            await asyncio.sleep(self.check_every)
            if self._stopping or self.running():
                continue
            log.error("%s exited (%s); restarting (log: %s)", self.label,
                      self.proc.returncode if self.proc else "?", self.log_file)
            self.before_restart()
            try:
                await asyncio.to_thread(self.start)
            except self.start_errors as exc:
                log.error("%s restart failed: %s", self.label, exc)
                await asyncio.sleep(self.retry_after)
