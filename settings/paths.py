"""Where vagent keeps its files: resolved once where a process starts and passed down."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = ".vagent"


def data_dir(override: str | Path | None = None, *, create: bool = True) -> Path:
    """`override` (--data-dir), else VAGENT_DATA_DIR, else `.vagent`, as an absolute path;
    created unless `create` is false (doctor only looks)."""
    path = Path(override or os.environ.get("VAGENT_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
