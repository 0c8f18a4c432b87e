"""Running the real `vagent` command in subprocesses, as a user would."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bus.server import free_port

VAGENT = [str(Path(sys.executable).parent / "vagent")]  # the installed console script
ROOT = Path(__file__).resolve().parent.parent


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("VAGENT_", "OPENAI_"))}
    out.update(extra)
    return out


def vagent(*args: str, timeout: float = 60, stdin: str | None = None, cwd: Path = ROOT,
           **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VAGENT, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env(**extra_env), check=False, input=stdin)


class Proc:
    """A long-running vagent command whose output lines can be awaited."""

    def __init__(self, args: Sequence[str], wrap: Sequence[str] = (), **extra_env: str) -> None:
        """`wrap` runs the command through another, e.g. `ip netns exec <host>`."""
        self.args = list(args)
        self.proc = subprocess.Popen([*wrap, *VAGENT, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=env(**extra_env), start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    # A wait, not a speed goal: loading the speech models alone takes 20-45 s on two busy cores.
    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if text in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen from vagent {' '.join(self.args)}; output:\n"
                             + "\n".join(self.lines))

    def output(self) -> str:
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        time.sleep(0.05)
        self.output()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: what a crash looks like."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def running(args: Sequence[str], ready: str, **extra_env: str) -> Iterator[Proc]:
    """A long-running vagent command, once it printed `ready`; it must stop cleanly (exit 0)."""
    proc = Proc(args, **extra_env)
    try:
        proc.wait_for(ready)
        yield proc
    finally:
        code = proc.stop()  # also when the command never got ready or an inner one failed
    assert code == 0, proc.output()


def up(nats_url: str, data: Path, llm_base_url: str) -> contextlib.AbstractContextManager[Proc]:
    """`vagent up` on `nats_url`, its dialogue answered by the LLM at `llm_base_url`."""
    return running(["up", "--nats", nats_url, "--data-dir", str(data), "--edge-port", str(free_port())],
                   "vagent is up", OPENAI_BASE_URL=llm_base_url)


def projections_serving(nats_url: str, data: Path) -> contextlib.AbstractContextManager[Proc]:
    """`vagent projections serve`: the read models the CLI asks."""
    return running(["projections", "serve", "--nats", nats_url, "--data-dir", str(data)],
                   "vagent projections: serving")
