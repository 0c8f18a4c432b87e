"""Structured logs: one line per record, extra fields as key=value (or JSON lines)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        fields = " ".join(f"{k}={_quote(v)}" for k, v in _extras(record).items())
        line = f"{ts} {record.levelname:<5} {record.name} {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info and record.levelno >= logging.ERROR and os.environ.get("VAGENT_DEBUG"):
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


def setup(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    json_lines = os.environ.get("VAGENT_LOG_FORMAT", "text") == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("VAGENT_LOG_LEVEL", "INFO").upper())
    for noisy in ("nats", "httpx", "httpx2", "httpcore", "openai", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
