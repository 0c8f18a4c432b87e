"""Access, refresh and device tokens.

- Access tokens: HS256 JWTs, short-lived; each carries its id (`jti`) and its login
  family (`fam`). Every request checks the revocation list in KV (`vagent_tokens`):
  the token, its family and its user, each kept revoked only as long as it could live.
- Refresh tokens: opaque `<id>.<secret>`, one record each in KV holding the secret's
  hash. Using one marks it used and returns a new pair in the same family; presenting a
  used one again means it was stolen, so the whole family is revoked.
- An administrator's lock revokes every token the user holds (`user.<id>`, holding the
  lock's time in ms): access tokens carry their issue time in ms (`iat_ms`) and refresh
  records theirs, so tokens issued after the lock (after an unlock) stay valid.
- Device tokens: JWTs naming the device; valid while the device's binding record
  (`vagent_devices`) still names the token's id, so unbinding revokes them.
- Vision tokens: JWTs naming one device session, handed to the device when it connects,
  short-lived (`vision.token_ttl`): what it posts its camera's photos with.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec

from bus import kv
from bus.client import Bus
from bus.errors import ConflictError
from domain.errors import Unauthorized
from schemas import new_id
from settings.config import AuthSettings

BUCKET = "vagent_tokens"
DEVICES = "vagent_devices"
ALGORITHM = "HS256"
ISSUER = "vagent"


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int = 0  # seconds the access token lives


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid access token speaks for."""

    user_id: str
    jti: str
    family: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    user_id: str
    device_id: str
    assistant_id: str
    jti: str


class _RefreshRecord(msgspec.Struct):
    user_id: str
    family: str
    secret_sha256: str
    expires_at: float
    used: bool = False
    issued_ms: int = 0  # when this refresh token was issued (ms since the epoch)


class DeviceBinding(msgspec.Struct):
    """KV record of a bound device: who owns it and which token id is valid."""

    user_id: str
    device_id: str
    assistant_id: str
    jti: str
    # The Client-Id that activated it: the same client may collect a fresh token later
    # (xiaozhi firmware asks for its settings at every boot).
    client_id: str | None = None


def device_key(device_id: str) -> str:
    # KV keys allow few characters; a MAC has colons.
    return hashlib.sha256(device_id.lower().encode()).hexdigest()


class Tokens:
    def __init__(self, bus: Bus, key: bytes, settings: AuthSettings) -> None:
        self.bus = bus
        self._key = key
        self.settings = settings

    def subkey(self, purpose: str) -> bytes:
        """A key for another use, derived from the signing key (one secret to manage)."""
        return hmac.new(self._key, f"vagent {purpose}".encode(), hashlib.sha256).digest()

    # --- access and refresh ------------------------------------------------------------

    async def issue(self, user_id: str, family: str | None = None) -> TokenPair:
        family = family or new_id()
        now_ms = time.time_ns() // 1_000_000
        now = now_ms / 1000
        # exp rounded up: the token lives at least the `expires_in` the client is told.
        access = jwt.encode({"iss": ISSUER, "sub": user_id, "typ": "access", "jti": new_id(),
                             "fam": family, "iat": int(now), "iat_ms": now_ms,
                             "exp": math.ceil(now + self.settings.access_ttl)},
                            self._key, algorithm=ALGORITHM)
        rid, secret = new_id(), secrets.token_urlsafe(32)
        record = _RefreshRecord(user_id=user_id, family=family, expires_at=now + self.settings.refresh_ttl,
                                secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
                                issued_ms=now_ms)
        await kv.create(self.bus, BUCKET, f"rt.{rid}", msgspec.json.encode(record),
                        ttl=self.settings.refresh_ttl)
        return TokenPair(access_token=access, refresh_token=f"{rid}.{secret}",
                         expires_in=int(self.settings.access_ttl))

    async def verify(self, token: str) -> Principal:
        claims = self._decode(token, "access")
        principal = Principal(user_id=claims["sub"], jti=claims["jti"], family=claims["fam"],
                              expires_at=float(claims["exp"]))
        revoked = await asyncio.gather(*(kv.get(self.bus, BUCKET, key) for key in (
            f"revoked.{principal.jti}", f"family.{principal.family}", f"user.{principal.user_id}")))
        if revoked[0] or revoked[1]:
            raise Unauthorized("token_revoked", "this token was revoked (logout or refresh reuse)")
        issued_ms = claims.get("iat_ms")
        if not isinstance(issued_ms, int):  # a token without it: its whole second
            iat = claims["iat"]
            issued_ms = int(iat) * 1000 if isinstance(iat, int | float) else 0
        if _revoked_since(revoked[2], issued_ms):
            raise Unauthorized("token_revoked", "this account's tokens were revoked")
        return principal

    async def refresh(self, refresh_token: str) -> TokenPair:
        rid, _, secret = refresh_token.partition(".")
        entry = None
        if rid and secret and len(rid) <= 64 and rid.isascii() and rid.isalnum():
            entry = await kv.get_entry(self.bus, BUCKET, f"rt.{rid}")
        if entry is None:
            raise Unauthorized("refresh_token_invalid", "unknown or expired refresh token")
        record = msgspec.json.decode(entry.value, type=_RefreshRecord)
        given = hashlib.sha256(secret.encode()).hexdigest()
        if not hmac.compare_digest(given, record.secret_sha256):
            raise Unauthorized("refresh_token_invalid", "unknown or expired refresh token")
        family_revoked, user_revoked = await asyncio.gather(
            kv.get(self.bus, BUCKET, f"family.{record.family}"),
            kv.get(self.bus, BUCKET, f"user.{record.user_id}"))
        if family_revoked:
            raise Unauthorized("token_revoked", "this login was revoked")
        if _revoked_since(user_revoked, record.issued_ms):
            raise Unauthorized("token_revoked", "this account's tokens were revoked")
        remaining = record.expires_at - time.time()
        if remaining <= 0:
            raise Unauthorized("refresh_token_invalid", "unknown or expired refresh token")
        if record.used:
            await self.revoke_family(record.family)
            raise Unauthorized("refresh_token_reused",
                               "this refresh token was already used: every token of its login is revoked")
        record.used = True
        try:
            await kv.update(self.bus, BUCKET, f"rt.{rid}", msgspec.json.encode(record),
                            last=entry.revision, ttl=remaining)
        except ConflictError:
            # Two refreshes with one token raced: at most one may win, and a race is what
            # a replayed stolen token looks like.
            await self.revoke_family(record.family)
            raise Unauthorized("refresh_token_reused",
                               "this refresh token was already used: every token of its login is revoked"
                               ) from None
        return await self.issue(record.user_id, record.family)

    async def refresh_family(self, refresh_token: str, user_id: str) -> str | None:
        """The login family of `user_id`'s refresh token (for logout), or None if it is
        unknown, wrong or someone else's: knowing a token's id must not let anyone end
        another user's login."""
        rid, _, secret = refresh_token.partition(".")
        if not (rid and secret and len(rid) <= 64 and rid.isascii() and rid.isalnum()):
            return None
        entry = await kv.get_entry(self.bus, BUCKET, f"rt.{rid}")
        if entry is None:
            return None
        record = msgspec.json.decode(entry.value, type=_RefreshRecord)
        given = hashlib.sha256(secret.encode()).hexdigest()
        if not hmac.compare_digest(given, record.secret_sha256) or record.user_id != user_id:
            return None
        return record.family

    async def revoke(self, principal: Principal) -> None:
        """Logout: this access token and every token of its login."""
        remaining = max(1.0, principal.expires_at - time.time())
        await kv.put(self.bus, BUCKET, f"revoked.{principal.jti}", b"1", ttl=remaining)
        await self.revoke_family(principal.family)

    async def revoke_family(self, family: str) -> None:
        await kv.put(self.bus, BUCKET, f"family.{family}", b"1", ttl=self.settings.refresh_ttl)

    async def revoke_user(self, user_id: str) -> None:
        """Every token issued to the user until now (an administrator's lock)."""
        # In ms, compared with each token's issue time: a login right after an unlock, in
        # the same second as the lock, must not count as revoked.
        await kv.put(self.bus, BUCKET, f"user.{user_id}", str(time.time_ns() // 1_000_000).encode(),
                     ttl=self.settings.refresh_ttl)

    # --- devices ------------------------------------------------------------------------

    def device_token(self, binding: DeviceBinding) -> str:
        now = time.time()
        return jwt.encode({"iss": ISSUER, "sub": binding.user_id, "typ": "device", "jti": binding.jti,
                           "dev": binding.device_id, "ast": binding.assistant_id, "iat": int(now),
                           "exp": int(now + self.settings.device_token_ttl)},
                          self._key, algorithm=ALGORITHM)

    async def verify_device(self, token: str, device_id: str | None = None) -> DeviceGrant:
        """A device token's grant, if its device is still bound with it (and is `device_id`)."""
        claims = self._decode(token, "device")
        if device_id is not None and claims["dev"].lower() != device_id.lower():
            raise Unauthorized("token_invalid", "this token belongs to another device")
        raw = await kv.get(self.bus, DEVICES, device_key(claims["dev"]))
        binding = msgspec.json.decode(raw, type=DeviceBinding) if raw else None
        if binding is None or binding.jti != claims["jti"]:
            raise Unauthorized("token_revoked", "this device was unbound")
        return DeviceGrant(user_id=binding.user_id, device_id=binding.device_id,
                           assistant_id=binding.assistant_id, jti=binding.jti)

    # --- a device session's vision token -------------------------------------------------

    def vision_token(self, session_id: str, device_id: str, ttl: float) -> str:
        """What a device presents with its photos: good for this session and device only."""
        now = time.time()
        return jwt.encode({"iss": ISSUER, "sub": session_id, "typ": "vision", "jti": new_id(),
                           "dev": device_id.lower(), "iat": int(now), "exp": math.ceil(now + ttl)},
                          self._key, algorithm=ALGORITHM)

    def verify_vision(self, token: str, device_id: str) -> str:
        """The session a vision token was issued for, if it is `device_id`'s."""
        claims = self._decode(token, "vision")
        if claims.get("dev") != device_id.lower():
            raise Unauthorized("token_invalid", "this token belongs to another device")
        return str(claims["sub"])

    def _decode(self, token: str, typ: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "jti", "typ"]})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token_expired", "the token has expired: refresh it") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("token_invalid", f"invalid token: {exc}") from None
        if claims.get("typ") != typ:
            raise Unauthorized("token_invalid", f"not an {typ} token")
        return claims


def _revoked_since(revoked_ms: bytes | None, issued_ms: int) -> bool:
    """Whether a user-wide revocation (its time in ms) covers a token issued at `issued_ms`."""
    if not revoked_ms:
        return False
    try:
        return issued_ms <= int(revoked_ms)
    except ValueError:
        return True  # unreadable: fail closed
