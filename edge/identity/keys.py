"""The JWT signing key: from the environment (every edge of a deployment shares it) or,
on a single machine, created once in the data directory."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from actors.config import AuthSettings, secret

KEY_FILE = "jwt.key"


def signing_key(settings: AuthSettings, data_dir: Path) -> bytes:
    configured = secret(settings.jwt_secret_env)
    if configured:
        if len(configured) < 32:
            raise ValueError(f"{settings.jwt_secret_env} must be at least 32 characters")
        return configured.encode()
    path = data_dir / KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(48).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key
