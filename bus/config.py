"""Which NATS vagent talks to (environment first)."""

from __future__ import annotations

import os

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def nats_url(override: str | None = None) -> str:
    return override or os.environ.get("VAGENT_NATS_URL") or DEFAULT_NATS_URL


def replicas() -> int:
    """Stream replicas: 1 on the embedded server, 3 on a production cluster."""
    return int(os.environ.get("VAGENT_REPLICAS", "1"))
