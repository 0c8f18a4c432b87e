"""Binding xiaozhi devices to a user's assistant with a short activation code.

1. The device asks for a code (`Device-Id` plus a `Client-Id` only it knows) and shows
   or speaks it. With the code comes a `challenge`: the device's polls (`confirm`) name
   it, so a poll counts only for the device that asked, and once.
2. Its owner, logged in, binds the code to one of their assistants: a `device.bound`
   event, a binding record in KV, and a device token.
3. The device asks again with the same ids and receives a token; it may ask again at
   any later time (xiaozhi firmware asks for its settings at every boot).

Unbinding deletes the binding record, which revokes the token (tokens.verify_device).

"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import msgspec

from bus import kv
from bus.client import Bus
from bus.errors import ConflictError
from domain.accounts import UserState, load_user
from domain.errors import Conflict, Expired, Invalid, NotFound, Unauthorized, Unavailable
from domain.language import SPOKEN, Spoken
from domain.tokens import BUCKET, DEVICES, DeviceBinding, Tokens, device_key
from schemas import DeviceBound, DeviceUnbound, is_token, new_id
from settings.config import AuthSettings

CODE_DIGITS = 6
APPEND_ATTEMPTS = 10  # conditional appends to the owner's log, retried on a concurrent change
# A device's language (its OTA `Accept-Language`) is written again at each boot's OTA check,
# so a device kept in use never loses it and one long gone leaves nothing behind.
LANGUAGE_TTL = 90 * 86_400.0

def record_ttl(code_ttl: float) -> float:
    """A pending record outlives its code (by the code's life, at least a minute), so that
    a late device or owner is told the code expired rather than that it never was."""
    return code_ttl + max(code_ttl, 60.0)


class _Activation(msgspec.Struct):
    device_id: str
    client_id: str
    code: str
    challenge: str = ""
    expires_at: float = 0.0  # the code's end (time.time())
    token: str | None = None  # set once bound, for the device to collect
    assistant_id: str | None = None
    confirmed: bool = False  # the device's poll was answered "bound": its challenge is spent

    def expired(self) -> bool:
        return time.time() >= self.expires_at

    def expires_in(self) -> int:
        return max(0, int(self.expires_at - time.time()))


class Activation(msgspec.Struct):
    """What the device is told: a code to show (and the challenge its activation polls
    name), or, once bound, its token."""

    status: str  # "pending" | "bound"
    code: str | None = None
    expires_in: int | None = None
    token: str | None = None
    assistant_id: str | None = None
    challenge: str | None = None


class Proof(msgspec.Struct):
    """What a device with a key sends with its poll (xiaozhi Activation-Version 2): the
    challenge's HMAC-SHA256 in hex, and the key the server knows for it (None: unchecked)."""

    hmac: str | None
    key: bytes | None


def check_device_id(device_id: str) -> str:
    if not is_token(device_id):  # it becomes part of subjects and keys, e.g. a MAC
        raise Invalid("invalid_device_id", "Device-Id must be 1-128 of A-Z a-z 0-9 _ - : @ + =",
                      {"field": "device_id"})
    return device_id.lower()


class Devices:
    def __init__(self, bus: Bus, tokens: Tokens, settings: AuthSettings) -> None:
        self.bus = bus
        self.tokens = tokens
        self.settings = settings

    async def remember_language(self, device_id: str, language: Spoken) -> None:
        """The language a device asked for (its OTA `Accept-Language`), for its sessions
        whose hello names none."""
        await kv.put(self.bus, BUCKET, f"lang.{device_key(check_device_id(device_id))}",
                     language.encode(), ttl=LANGUAGE_TTL)

    async def language(self, device_id: str) -> Spoken | None:
        """The language the device last asked for, if any."""
        raw = await kv.get(self.bus, BUCKET, f"lang.{device_key(device_id)}")
        said = raw.decode(errors="replace") if raw else None
        return "zh" if said == "zh" else "en" if said in SPOKEN else None

    async def activation(self, device_id: str, client_id: str) -> Activation:
        """The device's side: a code to show, the same one while it lives; or its token."""
        device_id = check_device_id(device_id)
        if not client_id or len(client_id) > 128:
            raise Invalid("invalid_client_id", "Client-Id is required (at most 128 characters)",
                          {"field": "client_id"})
        pending_key = f"act.{device_key(device_id)}"
        raw = await kv.get(self.bus, BUCKET, pending_key)
        if raw is not None:
            record = msgspec.json.decode(raw, type=_Activation)
            if record.client_id != client_id:
                raise Conflict("activation_pending",
                               "another client of this device is activating it", {})
            if record.token:
                return Activation(status="bound", token=record.token, assistant_id=record.assistant_id)
            if not record.expired():
                return Activation(status="pending", code=record.code, expires_in=record.expires_in(),
                                  challenge=record.challenge)
            # Expired and never bound: make room for a new code.
            await kv.delete(self.bus, BUCKET, pending_key)
            await kv.delete(self.bus, BUCKET, f"code.{record.code}")
        raw = await kv.get(self.bus, DEVICES, device_key(device_id))
        if raw:
            binding = msgspec.json.decode(raw, type=DeviceBinding)
            if binding.client_id is None or not hmac.compare_digest(binding.client_id, client_id):
                raise Conflict("device_bound", "this device is bound: its owner must unbind it first")
            return Activation(status="bound", token=self.tokens.device_token(binding),
                              assistant_id=binding.assistant_id)
        life = self.settings.code_ttl
        for _ in range(20):
            code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
            record = _Activation(device_id=device_id, client_id=client_id, code=code,
                                 challenge=secrets.token_urlsafe(24), expires_at=time.time() + life)
            if await kv.create(self.bus, BUCKET, f"code.{code}", msgspec.json.encode(record),
                               ttl=record_ttl(life)) is not None:
                break
        else:
            raise Unavailable("no_code", "no free activation code: try again")
        if await kv.create(self.bus, BUCKET, pending_key, msgspec.json.encode(record),
                           ttl=record_ttl(life)) is None:
            await kv.delete(self.bus, BUCKET, f"code.{code}")
            return await self.activation(device_id, client_id)  # a concurrent request won
        return Activation(status="pending", code=code, expires_in=record.expires_in(),
                          challenge=record.challenge)

    async def confirm(self, device_id: str, client_id: str, challenge: str | None,
                      proof: Proof | None = None) -> bool:
        """The device polls: True once its code was bound, False while it waits. The poll
        names the challenge it was given (a device without a serial number names none and
        is known by its ids alone); `proof`, where the device's key is known, must be the
        challenge's HMAC-SHA256 under it. A challenge counts once: after the poll that was
        told "bound", it is spent."""
        device_id = check_device_id(device_id)
        entry = await kv.get_entry(self.bus, BUCKET, f"act.{device_key(device_id)}")
        if entry is None:
            raise NotFound("activation", device_id)
        record = msgspec.json.decode(entry.value, type=_Activation)
        if record.client_id != client_id:
            raise Conflict("activation_pending", "another client of this device is activating it")
        if challenge is not None and not hmac.compare_digest(challenge, record.challenge):
            raise Conflict("challenge_mismatch", "this is not the challenge this device was given")
        if record.confirmed:
            raise Conflict("challenge_used", "this activation was already confirmed: ask for "
                           "the device's settings again")
        if proof is not None and proof.key is not None:
            expected = hmac.new(proof.key, record.challenge.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, (proof.hmac or "").lower()):
                raise Unauthorized("hmac_invalid", "the challenge's HMAC does not match this "
                                   "device's key")
        if record.token is None:
            if record.expired():
                raise Expired("activation_expired",
                              "the activation code expired: ask for the device's settings again "
                              "for a new one")
            return False
        record.confirmed = True
        # Conditional: of two polls at once, one is told "bound" and the other is a replay.
        try:
            await kv.update(self.bus, BUCKET, f"act.{device_key(device_id)}", msgspec.json.encode(record),
                            last=entry.revision, ttl=max(1.0, record.expires_in()))
        except ConflictError:
            raise Conflict("challenge_used", "this activation was already confirmed") from None
        return True
    async def bind(self, user: UserState, code: str, assistant_id: str,
                   name: str | None) -> tuple[DeviceBinding, str]:
        """The owner's side: bind the device showing `code` to their assistant."""
        code = code.strip()
        raw = await kv.get(self.bus, BUCKET, f"code.{code}") if code.isascii() and code.isdigit() else None
        if raw is None:
            raise Invalid("activation_code_invalid", "unknown or expired activation code",
                          {"field": "code"})
        record = msgspec.json.decode(raw, type=_Activation)
        if record.token:
            raise Invalid("activation_code_invalid", "this code was used", {"field": "code"})
        if record.expired():
            raise Expired("activation_expired", "this activation code expired: the device shows a "
                          "new one when it asks again", {"field": "code"})
        binding = DeviceBinding(user_id=user.user_id, device_id=record.device_id,
                                assistant_id=assistant_id, jti=new_id(), client_id=record.client_id)
        if await kv.create(self.bus, DEVICES, device_key(record.device_id),
                           msgspec.json.encode(binding)) is None:
            raise Conflict("device_bound", "this device is already bound")
        bound = DeviceBound(user_id=user.user_id, device_id=record.device_id,
                            assistant_id=assistant_id, name=name)
        try:
            # The binding record above is this request's alone, so another change to the
            # account meanwhile (another device bound, say) only means appending again.
            await self._append_to_user(user.user_id, bound, user.last_seq)
        except ConflictError:
            await kv.delete(self.bus, DEVICES, device_key(record.device_id))
            raise Conflict("conflict", "the account changed meanwhile: retry") from None
        token = self.tokens.device_token(binding)
        # The device collects its token within the code's life (and later by its Client-Id).
        record.token, record.assistant_id = token, assistant_id
        record.expires_at = time.time() + self.settings.code_ttl
        remaining = max(1.0, self.settings.code_ttl)
        for key in (f"code.{code}", f"act.{device_key(record.device_id)}"):
            await kv.put(self.bus, BUCKET, key, msgspec.json.encode(record), ttl=remaining)
        return binding, token

    async def unbind(self, user_id: str, device_id: str) -> None:
        device_id = device_id.lower()
        for _ in range(APPEND_ATTEMPTS):
            user = await load_user(self.bus, user_id)
            if user is None or device_id not in user.devices:
                raise NotFound("device", device_id)
            try:
                await self.bus.append(DeviceUnbound(user_id=user_id, device_id=device_id), user.last_seq)
                break
            except ConflictError:
                continue  # the account changed meanwhile: decide again on its new state
        else:
            raise Conflict("conflict", "the account changed meanwhile: retry")
        await kv.delete(self.bus, DEVICES, device_key(device_id))  # the token dies with it
        await kv.delete(self.bus, BUCKET, f"act.{device_key(device_id)}")

    async def _append_to_user(self, user_id: str, event: DeviceBound, last_seq: int) -> None:
        for attempt in range(APPEND_ATTEMPTS):
            try:
                await self.bus.append(event, last_seq)
                return
            except ConflictError:
                user = await load_user(self.bus, user_id)
                if user is None or attempt == APPEND_ATTEMPTS - 1:
                    raise
                last_seq = user.last_seq
