"""Where the running stack is, so that every command finds it without flags.

`vagent up`, `vagent edge` and `vagent projections serve` record where they run in
`<data dir>/stack.json` (`Stack`), and name that record in a pointer,
`$XDG_STATE_HOME/vagent/stack.json` (default `~/.local/state/vagent/stack.json`): the
latest started stack. A clean stop removes both. A crash leaves them behind, which is
harmless: a record whose process is gone is ignored (`read`), so nothing has to clean up.

The other commands `locate` the stack: the NATS URL and data directory given (flag or
environment) first; else the record in the given data directory; else the pointer's
live record; else `./.vagent/stack.json` if live; else the defaults. Looking creates no file.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bus.config import DEFAULT_NATS_URL
from settings.paths import DEFAULT_DATA_DIR

RECORD = "stack.json"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Stack(msgspec.Struct, kw_only=True):
    """One running stack, as `<data dir>/stack.json` holds it."""

    nats_url: str
    data_dir: str  # absolute
    pid: int  # the process that recorded it: the record counts while it lives
    started: str  # when, ISO 8601 UTC
    edge_url: str | None = None  # the API and web page (http)
    llm_url: str | None = None  # the local llama-server `vagent up` started, if it did

    @property
    def url(self) -> str:
        """How to name it to a user: its web address, else its NATS."""
        return self.edge_url or self.nats_url


class Pointer(msgspec.Struct):
    """`$XDG_STATE_HOME/vagent/stack.json`: the record of the latest started stack."""

    record: str  # absolute path of a `<data dir>/stack.json`


def pointer_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vagent" / RECORD


def record_path(data_dir: Path) -> Path:
    return data_dir / RECORD


def alive(pid: int, started: str) -> bool:
    """Whether the process that wrote a record at `started` still runs: its pid exists, and
    (where /proc tells) was not given to a process started since (a pid reused after a crash)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    began = _process_start(pid)
    if began is None:
        return True
    try:
        recorded = calendar.timegm(time.strptime(started, TIME_FORMAT))
    except ValueError:
        return True
    return began <= recorded + 2  # whole seconds, both the record's time and the boot time


def _process_start(pid: int) -> float | None:
    """When process `pid` started (Unix time), from /proc; None where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    # Field 22, counted after the command name (which may hold spaces), in clock ticks.
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _load(path: Path) -> Stack | None:
    """The record at `path` as written, live or not; None if absent or unreadable."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Stack)
    except (OSError, msgspec.DecodeError):
        return None


def read(path: Path) -> Stack | None:
    """The record at `path` if its process still runs (a crashed stack's record is ignored)."""
    found = _load(path)
    return found if found is not None and alive(found.pid, found.started) else None


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def record(*, nats_url: str, data_dir: Path, edge_url: str | None = None,
           llm_url: str | None = None) -> Stack:
    """Record this process's part of the stack; returns what `forget` takes back.

    A live record of another process on the same NATS (`vagent projections serve` started
    before `vagent edge` on one data directory) keeps its process and its addresses, and
    gains those it lacks from this one; otherwise this process's record replaces what was
    there."""
    path = record_path(data_dir)
    mine = Stack(nats_url=nats_url, data_dir=str(data_dir), pid=os.getpid(),
                 started=time.strftime(TIME_FORMAT, time.gmtime()),
                 edge_url=edge_url, llm_url=llm_url)
    other = read(path)
    written = mine
    if other is not None and other.pid != mine.pid and other.nats_url == nats_url:
        written = msgspec.structs.replace(other, edge_url=other.edge_url or edge_url,
                                          llm_url=other.llm_url or llm_url)
    _write(path, msgspec.json.encode(written))
    _write(pointer_path(), msgspec.json.encode(Pointer(str(path))))
    return mine


def forget(mine: Stack) -> None:
    """Take back what `record` wrote, on a clean stop: the record and the pointer to it if
    they are this process's; else the addresses it added to another process's record."""
    path = record_path(Path(mine.data_dir))
    found = _load(path)
    if found is None:
        return
    if found.pid == mine.pid:
        path.unlink(missing_ok=True)
        pointer = pointer_path()
        with contextlib.suppress(OSError, msgspec.DecodeError):
            if msgspec.json.decode(pointer.read_bytes(), type=Pointer).record == str(path):
                pointer.unlink(missing_ok=True)
        return
    kept = msgspec.structs.replace(
        found, edge_url=None if mine.edge_url and found.edge_url == mine.edge_url else found.edge_url,
        llm_url=None if mine.llm_url and found.llm_url == mine.llm_url else found.llm_url)
    if kept != found:
        _write(path, msgspec.json.encode(kept))


def _pointed() -> Path | None:
    try:
        return Path(msgspec.json.decode(pointer_path().read_bytes(), type=Pointer).record)
    except (OSError, msgspec.DecodeError):
        return None


@dataclass(frozen=True)
class Located:
    """What a command talks to: the NATS URL and data directory, and the live stack they
    came from (None: the defaults, or what the flags said, with no stack recorded there)."""

    nats_url: str
    data_dir: Path
    stack: Stack | None
    named: bool = False  # both the NATS URL and the data directory were given

    @property
    def announce(self) -> str | None:
        """The line to tell the user which stack a command uses, when it is not the default
        one (`vagent up` with no flags, in this directory) and the flags did not name it."""
        s = self.stack
        if s is None or self.named or (s.nats_url == DEFAULT_NATS_URL
                         and Path(s.data_dir) == Path(DEFAULT_DATA_DIR).resolve()):
            return None
        return f"vagent: using the stack at {s.url} (data {s.data_dir})"


def locate(nats: str | None = None, data_dir: str | Path | None = None) -> Located:
    """The stack a command talks to. `nats` and `data_dir` are the command's flags; the
    environment's VAGENT_NATS_URL and VAGENT_DATA_DIR count as given too."""
    given_nats = nats or os.environ.get("VAGENT_NATS_URL") or None
    given_dir = data_dir or os.environ.get("VAGENT_DATA_DIR") or None
    if given_dir is not None:
        places = [record_path(Path(given_dir).resolve())]
    else:
        places = [p for p in (_pointed(), record_path(Path(DEFAULT_DATA_DIR).resolve())) if p]
    for place in places:
        stack = read(place)
        # A record of another NATS than the one given describes another stack.
        if stack is not None and (given_nats is None or given_nats == stack.nats_url):
            return Located(given_nats or stack.nats_url, Path(stack.data_dir), stack,
                           named=given_nats is not None and given_dir is not None)
    return Located(given_nats or DEFAULT_NATS_URL,
                   Path(given_dir or DEFAULT_DATA_DIR).resolve(), None)
