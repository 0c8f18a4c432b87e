"""Where vagent keeps its data and which NATS it talks to (environment first)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def nats_url(override: str | None = None) -> str:
    return override or os.environ.get("VAGENT_NATS_URL") or DEFAULT_NATS_URL


def data_dir(override: str | Path | None = None) -> Path:
    path = Path(override or os.environ.get("VAGENT_DATA_DIR") or ".vagent").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def replicas() -> int:
    """Stream replicas: 1 on the embedded server, 3 on a production cluster."""
    return int(os.environ.get("VAGENT_REPLICAS", "1"))
