"""Password rules and argon2id hashing (argon2-cffi), the hash never leaving KV."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from domain.errors import Invalid, Unavailable
from settings.config import Argon2Settings

T = TypeVar("T")
MAX_LENGTH = 256  # hashing cost grows with length: refuse essay-sized passwords
# The most common passwords of at least ten characters in public breach lists.
COMMON = frozenset({
    "1234567890", "0123456789", "qwertyuiop", "1q2w3e4r5t", "password12", "password123",
    "passw0rd123", "iloveyou12", "abcdefghij", "abc1234567", "qwerty1234", "1qaz2wsx3edc",
    "qwertyuiop1", "zaq12wsxcde", "letmein123", "welcome123", "administrator", "changeme123",
    "password1234", "1234qwerasdf", "qazwsxedcrfv", "aaaaaaaaaa", "1111111111", "0000000000",
})


def problems(password: str, email: str, min_length: int) -> list[str]:
    """Why a password is too weak, each reason a sentence of its own (empty: acceptable)."""
    found = []
    if len(password) < min_length:
        found.append(f"The password must be at least {min_length} characters long.")
    if len(password) > MAX_LENGTH:
        found.append(f"The password must be at most {MAX_LENGTH} characters long.")
    if not any(c.isalpha() for c in password) or all(c.isalpha() for c in password):
        found.append("The password must mix letters with at least one digit or symbol.")
    lowered = password.lower()
    local = email.split("@", 1)[0].lower()
    if lowered in COMMON or len(set(password)) < 4:
        found.append("The password is too common or too repetitive.")
    if len(local) >= 4 and local in lowered:
        found.append("The password must not contain the name in the email address.")
    return found


def check_strength(password: str, email: str, min_length: int) -> None:
    found = problems(password, email, min_length)
    if found:
        raise Invalid("weak_password", " ".join(found), {"rules": found})


class Hasher:
    """argon2id, a few hashes at a time, in threads of its own.

    Each hash takes `memory_kib` (64 MiB) and `parallelism` threads' worth of CPU, so
    unbounded concurrent logins would take hundreds of MiB and every core: at most
    `concurrency` run at once and `queue` wait; beyond that the caller gets 503 at once
    (waiting longer would only hold the connection). The pool is its own, so queued hashes
    never hold the event loop's default executor, and its threads run at a lower priority
    so a real-time turn on the same cores goes first."""

    def __init__(self, settings: Argon2Settings) -> None:
        self._ph = PasswordHasher(time_cost=settings.time_cost, memory_cost=settings.memory_kib,
                                  parallelism=settings.parallelism, type=Type.ID)
        # Verified against when the email is unknown, so that path costs the same time.
        self._decoy = self._ph.hash("decoy password, never matches")
        self.concurrency = max(1, settings.concurrency)
        self.capacity = self.concurrency + max(0, settings.queue)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="argon2",
                                        initializer=_background_priority)
        self._admitted = 0  # running or queued in the pool
        self._lock = threading.Lock()  # the count drops in the pool's threads

    async def hash(self, password: str) -> str:
        return await self._run(self._ph.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._ph.verify(stored or self._decoy, password) and stored is not None
            except (VerificationError, InvalidHashError):
                return False

        return await self._run(check)

    def needs_rehash(self, stored: str) -> bool:
        return self._ph.check_needs_rehash(stored)

    def close(self) -> None:
        """Let the pool's threads end once their hashes are done."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._admitted >= self.capacity:
                raise busy()
            self._admitted += 1
        try:
            future = self._pool.submit(work, *args)
        except BaseException:
            self._release()
            raise
        # Released when the hash is done, not when its caller stops waiting: a request that
        # went away leaves its running hash counted until it ends.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._admitted -= 1


def busy() -> Unavailable:
    return Unavailable("busy", "too many sign-ins at once: retry in a moment",
                       {"retry_after": 1}, retry_after=1)


def _background_priority() -> None:
    """Lower this hashing thread's priority (nice 10). Linux keeps a nice value per thread
    and the threads argon2 starts for its lanes inherit it; elsewhere this does nothing."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
