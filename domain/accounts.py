"""Accounts: register, log in (with lockout), verify an email, lock and unlock.

The user's own event log is the state every decision reads (strongly consistent), and
each decision appends with the log's last sequence, so two racing writers cannot both
act on the same state. Secrets (the password hash, codes, counters) live in KV.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from bus import kv
from bus.client import Bus
from bus.errors import ConflictError
from bus.log import load
from domain.errors import Conflict, DomainError, Invalid, Locked, NotFound, Unauthorized, Unavailable
from domain.mail import MailError, send_code, verification_mode
from domain.passwords import Hasher, check_strength
from domain.tokens import BUCKET, TokenPair, Tokens
from schemas import (
    AssistantCreated,
    DeviceBound,
    DeviceUnbound,
    Event,
    Role,
    UserEmailVerified,
    UserLocked,
    UserRegistered,
    UserRoleChanged,
    UserUnlocked,
    new_id,
)
from settings.config import AuthSettings

log = logging.getLogger("vagent.edge.accounts")
CREDENTIALS = "vagent_credentials"
EMAILS = "vagent_emails"
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
STALE_CLAIM = 60.0  # seconds after which an email claim with no registered user is reclaimed
CODE_ATTEMPTS = 5


@dataclass
class UserState:
    """A user folded from their log."""

    user_id: str
    email: str = ""
    display_name: str | None = None
    default_assistant_id: str | None = None
    email_verified: bool = False
    locked: bool = False
    locked_until: int | None = None  # ns
    lock_reason: str | None = None
    role: Role = "user"
    devices: dict[str, str] = field(default_factory=dict)  # device id -> assistant id
    created_ts: int = 0
    last_seq: int = 0

    def is_locked(self, now_ns: int | None = None) -> bool:
        now_ns = now_ns or time.time_ns()
        return self.locked and (self.locked_until is None or self.locked_until > now_ns)


def fold_user(user_id: str, events: list[Event], last_seq: int) -> UserState | None:
    state = UserState(user_id=user_id, last_seq=last_seq)
    for event in events:
        match event:
            case UserRegistered():
                state.email, state.display_name = event.email, event.display_name
                state.default_assistant_id, state.created_ts = event.default_assistant_id, event.ts
            case UserEmailVerified():
                state.email_verified = True
            case UserLocked():
                state.locked, state.locked_until, state.lock_reason = True, event.until_ts, event.reason
            case UserUnlocked():
                state.locked, state.locked_until, state.lock_reason = False, None, None
            case UserRoleChanged():
                state.role = event.role
            case DeviceBound():
                state.devices[event.device_id] = event.assistant_id
            case DeviceUnbound():
                state.devices.pop(event.device_id, None)
    return state if state.email else None


async def load_user(bus: Bus, user_id: str) -> UserState | None:
    entries, last = await load(bus, "user", user_id)
    return fold_user(user_id, [e.event for e in entries if e.event is not None], last)


def normalize_email(email: str) -> str:
    email = email.strip()
    if len(email) > 254 or not EMAIL.match(email):
        raise Invalid("invalid_email", f"not an email address: {email!r}", {"field": "email"})
    local, _, domain = email.partition("@")
    return f"{local}@{domain.lower()}"


def email_key(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()


class _Claim(msgspec.Struct):
    user_id: str
    ts: float


class _Failures(msgspec.Struct):
    count: int


class _Code(msgspec.Struct):
    sha256: str
    attempts: int = 0


class Accounts:
    def __init__(self, bus: Bus, tokens: Tokens, settings: AuthSettings, *, persona: str) -> None:
        self.bus = bus
        self.tokens = tokens
        self.settings = settings
        self.persona = persona  # a new user's default assistant's (`[dialogue] system_prompt`)
        self.hasher = Hasher(settings.argon2)

    # --- registration -------------------------------------------------------------------

    async def register(self, email: str, password: str, display_name: str | None = None) -> UserState:
        email = normalize_email(email)
        check_strength(password, email, self.settings.password_min_length)
        user_id = new_id()
        # Hash before claiming the email: a hash refused as busy (503) then leaves no claim
        # behind to turn the client's retry into a 409.
        hashed = await self.hasher.hash(password)
        await self._claim_email(email, user_id)
        await kv.put(self.bus, CREDENTIALS, user_id, hashed.encode())
        assistant_id = new_id()
        # The user's own default assistant first: a user event never names a missing one.
        await self.bus.publish(AssistantCreated(assistant_id=assistant_id, owner_id=user_id,
                                                name="Assistant", persona=self.persona))
        registered = UserRegistered(user_id=user_id, email=email, display_name=display_name,
                                    default_assistant_id=assistant_id)
        stored = await self.bus.append(registered, 0)
        state = fold_user(user_id, [registered], stored.seq)
        assert state is not None
        if verification_mode(self.settings) != "off":
            try:
                await self.send_verification(state)
            except DomainError as exc:
                # The account exists now: failing the request would make its retry a 409.
                # The user asks for a new code (verify-email/resend) once mail works.
                log.warning("verification code not sent", extra={"user_id": user_id,
                                                                 "error": exc.message})
        return state

    async def _claim_email(self, email: str, user_id: str) -> None:
        key = email_key(email)
        value = msgspec.json.encode(_Claim(user_id=user_id, ts=time.time()))
        if await kv.create(self.bus, EMAILS, key, value) is not None:
            return
        entry = await kv.get_entry(self.bus, EMAILS, key)
        if entry is not None:
            claim = msgspec.json.decode(entry.value, type=_Claim)
            # A registration that died between its claim and its event leaves a claim with
            # no user; after a minute it is taken over rather than blocking the email.
            if time.time() - claim.ts > STALE_CLAIM and await load_user(self.bus, claim.user_id) is None:
                try:
                    await kv.update(self.bus, EMAILS, key, value, last=entry.revision)
                    return
                except ConflictError:
                    pass
        raise Conflict("email_taken", "an account with this email exists", {"field": "email"})

    async def user_for_email(self, email: str) -> str | None:
        raw = await kv.get(self.bus, EMAILS, email_key(email))
        return msgspec.json.decode(raw, type=_Claim).user_id if raw else None

    # --- login --------------------------------------------------------------------------

    async def login(self, email: str, password: str) -> TokenPair:
        try:
            email = normalize_email(email)
        except Invalid:
            raise Unauthorized("invalid_credentials", "wrong email or password") from None
        user_id = await self.user_for_email(email)
        user = await load_user(self.bus, user_id) if user_id else None
        if user is not None and user.is_locked():
            raise self.locked_error(user)
        stored = await kv.get(self.bus, CREDENTIALS, user.user_id) if user else None
        hashed = stored.decode() if stored else None
        if not await self.hasher.verify(hashed, password) or user is None or hashed is None:
            if user is not None:
                await self._failed_login(user)
            raise Unauthorized("invalid_credentials", "wrong email or password")
        await kv.delete(self.bus, BUCKET, f"fail.{user.user_id}")
        if self.hasher.needs_rehash(hashed):
            try:
                rehashed = await self.hasher.hash(password)
            except Unavailable:  # busy: the login succeeded all the same; rehash next time
                pass
            else:
                await kv.put(self.bus, CREDENTIALS, user.user_id, rehashed.encode())
                log.info("password rehashed with the current argon2 parameters",
                         extra={"user_id": user.user_id})
        return await self.tokens.issue(user.user_id)

    def locked_error(self, user: UserState) -> Locked:
        details: dict[str, object] = {"reason": user.lock_reason}
        retry = None
        if user.locked_until is not None:
            retry = max(1, math.ceil((user.locked_until - time.time_ns()) / 1e9))
            details["retry_after"] = retry
        return Locked("account_locked", "this account is locked"
                      + (" after repeated failed logins" if user.lock_reason == "failed_logins" else ""),
                      details, retry_after=retry)

    async def _failed_login(self, user: UserState) -> None:
        """Count a failure; the Nth in a row within the lockout window locks the account."""
        key = f"fail.{user.user_id}"
        for _ in range(10):  # compare-and-set: concurrent failures all count
            entry = await kv.get_entry(self.bus, BUCKET, key)
            count = (msgspec.json.decode(entry.value, type=_Failures).count if entry else 0) + 1
            value = msgspec.json.encode(_Failures(count=count))
            try:
                if entry is None:
                    if await kv.create(self.bus, BUCKET, key, value,
                                       ttl=self.settings.lockout_seconds) is None:
                        continue
                else:
                    await kv.update(self.bus, BUCKET, key, value, last=entry.revision,
                                    ttl=self.settings.lockout_seconds)
            except ConflictError:
                continue
            break
        else:
            return
        if count >= self.settings.lockout_failures:
            until = time.time_ns() + int(self.settings.lockout_seconds * 1e9)
            # Concurrent failures may all reach the count; only the one whose lock is
            # appended locks (and logs): the others find the account locked already. An
            # unrelated change meanwhile (a device bound) is re-read, not a lost lock.
            locked = await self._append_fresh(
                user.user_id, lambda fresh: None if fresh.is_locked() else UserLocked(
                    user_id=user.user_id, reason="failed_logins", until_ts=until))
            await kv.delete(self.bus, BUCKET, key)
            if locked is not None:
                log.warning("account locked after failed logins", extra={"user_id": user.user_id})

    # --- email verification -------------------------------------------------------------

    async def send_verification(self, user: UserState) -> None:
        if verification_mode(self.settings) == "off":
            raise Conflict("verification_disabled", "email verification is not configured")
        if user.email_verified:
            raise Conflict("already_verified", "this email is already verified")
        code = f"{secrets.randbelow(1_000_000):06d}"
        record = _Code(sha256=hashlib.sha256(code.encode()).hexdigest())
        await kv.put(self.bus, BUCKET, f"verify.{user.user_id}", msgspec.json.encode(record),
                     ttl=self.settings.code_ttl)
        try:
            await send_code(self.settings, user.email, code)
        except MailError as exc:
            log.error("sending a verification code failed", extra={"user_id": user.user_id,
                                                                   "error": str(exc)})
            raise Unavailable("mail_unavailable", "the verification email could not be sent: retry later",
                              retry_after=60) from None

    async def verify_email(self, user: UserState, code: str) -> None:
        if user.email_verified:
            return
        key = f"verify.{user.user_id}"
        entry = await kv.get_entry(self.bus, BUCKET, key)
        if entry is None:
            raise Invalid("code_invalid", "no pending code: ask for a new one", {"field": "code"})
        record = msgspec.json.decode(entry.value, type=_Code)
        given = hashlib.sha256(code.strip().encode()).hexdigest()
        if not hmac.compare_digest(given, record.sha256):
            record.attempts += 1
            if record.attempts >= CODE_ATTEMPTS:
                await kv.delete(self.bus, BUCKET, key)
            else:
                try:
                    await kv.update(self.bus, BUCKET, key, msgspec.json.encode(record),
                                    last=entry.revision, ttl=self.settings.code_ttl)
                except ConflictError:
                    pass
            raise Invalid("code_invalid", "wrong code", {"field": "code"})
        await kv.delete(self.bus, BUCKET, key)
        try:
            await self.bus.append(UserEmailVerified(user_id=user.user_id), user.last_seq)
        except ConflictError:
            fresh = await load_user(self.bus, user.user_id)
            if fresh is None or not fresh.email_verified:
                await self.bus.append(UserEmailVerified(user_id=user.user_id),
                                      fresh.last_seq if fresh else 0)

    # --- administration -----------------------------------------------------------------

    async def _append_fresh(self, user_id: str,
                            decide: Callable[[UserState], Event | None]) -> Event | None:
        """Append what `decide` makes of the user's current state, re-reading the state when
        another writer appended first (a login lockout, a device bind); the event appended,
        None when `decide` found nothing to do."""
        for _ in range(10):
            user = await self.require(user_id)
            event = decide(user)
            if event is None:
                return None
            try:
                await self.bus.append(event, user.last_seq)
                return event
            except ConflictError:
                continue
        raise Conflict("conflict", "the account keeps changing: retry")

    async def require(self, user_id: str) -> UserState:
        user = await load_user(self.bus, user_id)
        if user is None:
            raise NotFound("user", user_id)
        return user

    async def lock(self, user_id: str, reason: str = "admin", until_ts: int | None = None) -> UserState:
        await self._append_fresh(user_id, lambda user: UserLocked(user_id=user_id, reason=reason,
                                                                  until_ts=until_ts))
        await self.tokens.revoke_user(user_id)
        return await self.require(user_id)

    async def unlock(self, user_id: str) -> UserState:
        await self._append_fresh(user_id, lambda user: UserUnlocked(user_id=user_id) if user.locked else None)
        await kv.delete(self.bus, BUCKET, f"fail.{user_id}")
        return await self.require(user_id)

    async def set_role(self, user_id: str, role: Role) -> UserState:
        """Grant or take back the operator role; a role the user has already is no event."""
        await self._append_fresh(user_id, lambda user: None if user.role == role
                                 else UserRoleChanged(user_id=user_id, role=role))
        return await self.require(user_id)
