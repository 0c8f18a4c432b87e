"""Binding xiaozhi devices to a user's assistant with a short activation code.

1. The device asks for a code (`Device-Id` plus a `Client-Id` only it knows) and shows
   or speaks it.
2. Its owner, logged in, binds the code to one of their assistants: a `device.bound`
   event, a binding record in KV, and a device token.
3. The device asks again with the same ids and receives that token (for a while).

Unbinding deletes the binding record, which revokes the token (tokens.verify_device).
"""

from __future__ import annotations

import secrets

import msgspec

from bus import kv
from bus.client import Bus
from bus.errors import ConflictError
from domain.accounts import UserState, load_user
from domain.errors import Conflict, Invalid, NotFound, Unavailable
from domain.tokens import BUCKET, DEVICES, DeviceBinding, Tokens, device_key
from schemas import DeviceBound, DeviceUnbound, is_token, new_id
from settings.config import AuthSettings

CODE_DIGITS = 6
APPEND_ATTEMPTS = 10  # conditional appends to the owner's log, retried on a concurrent change


class _Activation(msgspec.Struct):
    device_id: str
    client_id: str
    code: str
    token: str | None = None  # set once bound, for the device to collect
    assistant_id: str | None = None


class Activation(msgspec.Struct):
    """What the device is told: a code to show, or, once bound, its token."""

    status: str  # "pending" | "bound"
    code: str | None = None
    expires_in: int | None = None
    token: str | None = None
    assistant_id: str | None = None


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
            return Activation(status="pending", code=record.code, expires_in=int(self.settings.code_ttl))
        if await kv.get(self.bus, DEVICES, device_key(device_id)):
            raise Conflict("device_bound", "this device is bound: its owner must unbind it first")
        for _ in range(20):
            code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
            record = _Activation(device_id=device_id, client_id=client_id, code=code)
            if await kv.create(self.bus, BUCKET, f"code.{code}", msgspec.json.encode(record),
                               ttl=self.settings.code_ttl) is not None:
                break
        else:
            raise Unavailable("no_code", "no free activation code: try again")
        if await kv.create(self.bus, BUCKET, pending_key, msgspec.json.encode(record),
                           ttl=self.settings.code_ttl) is None:
            await kv.delete(self.bus, BUCKET, f"code.{code}")
            return await self.activation(device_id, client_id)  # a concurrent request won
        return Activation(status="pending", code=code, expires_in=int(self.settings.code_ttl))

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
        binding = DeviceBinding(user_id=user.user_id, device_id=record.device_id,
                                assistant_id=assistant_id, jti=new_id())
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
        record.token, record.assistant_id = token, assistant_id
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
