"""Structured logs: one line per record, extra fields as key=value (or JSON lines), written
through the one `console` so that a log line never lands in the middle of an answer that a
command is streaming to stdout."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def reason(exc: BaseException) -> str:
    """An exception as one line: `ValueError: the message`."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extras = _extras(record)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and "error" not in extras:
            # Every failure says why on its own line; the traceback is for debugging only.
            extras["error"] = reason(exc)
        fields = " ".join(f"{k}={_quote(v)}" for k, v in extras.items())
        line = f"{ts} {record.levelname:<5} {record.name} {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info and os.environ.get("VAGENT_DEBUG"):
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            if record.exc_info[1] is not None:
                out.setdefault("error", reason(record.exc_info[1]))
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or "\n" in text or not text) else text


class Console:
    """stdout for what a command answers, stderr for its logs, shared by every thread.

    Streamed text may end mid-line; a log line written then starts on a line of its own when
    both streams reach the same place (a terminal, `2>&1`), and the text goes on after it.
    stdout itself only ever gets the answer. The streams are looked up at each write, so
    redirections made later (prompt_toolkit's patch_stdout, test capture) are followed.

    Held (see `hold`), an unfinished line is not written at all but kept for whoever shows
    it (the chat's prompt), and only whole lines reach stdout."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._open = False  # stdout has text after its last newline
        self._on_change: Callable[[], None] | None = None
        self.partial = ""  # held: the unfinished line

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._on_change is not None:
                whole, newline, self.partial = (self.partial + text).rpartition("\n")
                if newline:
                    self._put(sys.stdout, whole + newline)
                self._on_change()
                return
            self._put(sys.stdout, text)
            self._open = not text.endswith("\n")

    def line(self, text: str = "") -> None:
        """A whole line, after ending any open one."""
        with self._lock:
            self.end_line()
            self.write(text + "\n")

    def end_line(self) -> None:
        with self._lock:
            if self._open or self.partial:
                self.write("\n")

    def log(self, line: str) -> None:
        with self._lock:
            err = sys.stderr
            if self._open and _same_place(sys.stdout, err):
                err.write("\n")
                self._open = False  # the shared line is a fresh one after the log's
            self._put(err, line + "\n")

    def hold(self, on_change: Callable[[], None] | None) -> None:
        """Keep unfinished lines back (calling `on_change` whenever they change), or with
        None write them as they come again."""
        with self._lock:
            self.end_line()
            self._on_change = on_change

    @staticmethod
    def _put(stream: TextIO, text: str) -> None:
        stream.write(text)
        stream.flush()


def _same_place(out: TextIO, err: TextIO) -> bool:
    if out is err:
        return True
    try:
        return os.path.samestat(os.fstat(out.fileno()), os.fstat(err.fileno()))
    except (AttributeError, OSError, ValueError):
        return False  # e.g. an in-memory stream: not a file


console = Console()


class ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.log(self.format(record))
        except Exception:
            self.handleError(record)


def setup(level: str | None = None) -> None:
    handler = ConsoleHandler()
    json_lines = os.environ.get("VAGENT_LOG_FORMAT", "text") == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("VAGENT_LOG_LEVEL", "INFO").upper())
    for noisy in ("nats", "httpx", "httpx2", "httpcore", "openai", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
