"""Password rules and argon2id hashing (argon2-cffi), the hash never leaving KV."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from actors.config import Argon2Settings
from edge.errors import ApiError

MAX_LENGTH = 256  # hashing cost grows with length: refuse essay-sized passwords
# The most common passwords of at least ten characters in public breach lists.
COMMON = frozenset({
    "1234567890", "0123456789", "qwertyuiop", "1q2w3e4r5t", "password12", "password123",
    "passw0rd123", "iloveyou12", "abcdefghij", "abc1234567", "qwerty1234", "1qaz2wsx3edc",
    "qwertyuiop1", "zaq12wsxcde", "letmein123", "welcome123", "administrator", "changeme123",
    "password1234", "1234qwerasdf", "qazwsxedcrfv", "aaaaaaaaaa", "1111111111", "0000000000",
})


def problems(password: str, email: str, min_length: int) -> list[str]:
    """Why a password is too weak (empty: acceptable)."""
    found = []
    if len(password) < min_length:
        found.append(f"at least {min_length} characters")
    if len(password) > MAX_LENGTH:
        found.append(f"at most {MAX_LENGTH} characters")
    if not any(c.isalpha() for c in password) or all(c.isalpha() for c in password):
        found.append("letters and at least one digit or symbol")
    lowered = password.lower()
    local = email.split("@", 1)[0].lower()
    if lowered in COMMON or len(set(password)) < 4:
        found.append("not a common or repetitive password")
    if len(local) >= 4 and local in lowered:
        found.append("not containing the email's name")
    return found


def check_strength(password: str, email: str, min_length: int) -> None:
    found = problems(password, email, min_length)
    if found:
        raise ApiError(422, "weak_password", "the password needs " + "; ".join(found),
                       {"rules": found})


class Hasher:
    """argon2id; hashing runs in a thread (tens of milliseconds of CPU by design)."""

    def __init__(self, settings: Argon2Settings) -> None:
        self._ph = PasswordHasher(time_cost=settings.time_cost, memory_cost=settings.memory_kib,
                                  parallelism=settings.parallelism, type=Type.ID)
        # Verified against when the email is unknown, so that path costs the same time.
        self._decoy = self._ph.hash("decoy password, never matches")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._ph.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._ph.verify(stored or self._decoy, password) and stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    def needs_rehash(self, stored: str) -> bool:
        return self._ph.check_needs_rehash(stored)
