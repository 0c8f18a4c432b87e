"""The JWT signing key: from the environment (every edge of a deployment shares it) or,
on a single machine, created once in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from settings.config import AuthSettings, secret

KEY_FILE = "jwt.key"


def signing_key(settings: AuthSettings, data_dir: Path) -> bytes:
    configured = secret(settings.jwt_secret_env)
    if configured:
        if len(configured) < 32:
            raise ValueError(f"{settings.jwt_secret_env} must be at least 32 characters")
        return configured.encode()
    path = data_dir / KEY_FILE
    existing = _read(path)
    if existing is not None:
        return existing
    # Written whole under a temporary name, then linked into place: a second process
    # starting at the same moment either wins the link or reads the winner's key, and
    # never sees a half-written (or empty) file.
    key = secrets.token_urlsafe(48).encode()
    temporary = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)
    except FileExistsError:
        winner = _read(path)
        if winner is None:  # linked and deleted again meanwhile: nothing sensible to do
            raise
        key = winner
    finally:
        temporary.unlink(missing_ok=True)
    return key


def _read(path: Path) -> bytes | None:
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        return None
    if not key:
        raise ValueError(f"{path} is empty: delete it to create a new signing key")
    return key
