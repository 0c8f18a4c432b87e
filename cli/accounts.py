"""`vagent users`, `vagent assistants`, `vagent devices`: administering accounts from a
terminal, straight over NATS (no API, no token).

Changes go through the same command services as the API (domain), so they are
decided on the same event logs; lists read the read models, fresh (after every stored
event was applied), from the running projection service or else from the DuckDB file.
Every command gets an `Admin`: the settings in it were read once, in cli/main.py.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from bus.client import Bus
from cli.assistant_options import invalid
from cli.display import Column, minute, named, shorten, table, when
from domain.accounts import Accounts, UserState, normalize_email
from domain.assistants import Assistants, load_assistant
from domain.devices import Devices
from domain.errors import NotFound
from domain.keys import KEY_FILE, signing_key
from domain.mail import MailError
from domain.tokens import Tokens
from edge.api.models import AssistantCreate, AssistantPatch, DeviceBind, patch_changes
from projections.assistants import settings_of
from projections.client import QueryError, run_query
from schemas import Role, TurnSettings
from settings.config import Config, secret

PAGE = 1000


class AdminError(Exception):
    """What the CLI prints in red before exiting with 1."""


class Admin(NamedTuple):
    """What an account or knowledge-base command works with."""

    bus: Bus
    data_dir: Path
    config: Config


def accounts(admin: Admin) -> Accounts:
    auth = admin.config.auth
    # An account command signs no token (it looks accounts up, creates and locks them), so it
    # reads the stack's key only where there is one: looking never creates a key file.
    has_key = secret(auth.jwt_secret_env) or (admin.data_dir / KEY_FILE).exists()
    key = signing_key(auth, admin.data_dir) if has_key else secrets.token_bytes(48)
    return Accounts(admin.bus, Tokens(admin.bus, key, auth), auth,
                    persona=admin.config.dialogue.system_prompt)


async def resolve_user(accts: Accounts, who: str) -> UserState:
    """A user by email (anything with an @) or by id."""
    who = who.strip()
    if "@" in who:
        user_id = await accts.user_for_email(normalize_email(who))
        user = await accts.require(user_id) if user_id else None
        if user is None:
            raise NotFound("user with email", who)
        return user
    return await accts.require(who)


async def rows(admin: Admin, name: str, **params: Any) -> list[dict[str, Any]]:
    """Every row of a paged read query (ordered by its first column), read fresh."""
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        try:
            columns, page = await run_query(admin.bus, admin.data_dir, name,
                                            {**params, "after": after, "limit": PAGE}, fresh=True)
        except QueryError as exc:
            raise AdminError(str(exc)) from None
        out += [dict(zip(columns, row, strict=True)) for row in page]
        if len(page) < PAGE:
            return out
        after = page[-1][0]


def print_json(value: Any) -> None:
    print(json.dumps(value, default=str, ensure_ascii=False))


def user_json(user: UserState) -> dict[str, Any]:
    return {"user_id": user.user_id, "email": user.email, "display_name": user.display_name,
            "default_assistant_id": user.default_assistant_id, "email_verified": user.email_verified,
            "locked": user.is_locked(), "locked_until": user.locked_until, "lock_reason": user.lock_reason,
            "role": user.role,
            "devices": sorted(user.devices), "created_ts": user.created_ts}


def lock_text(locked: bool, until: int | None, reason: str | None) -> str:
    if not locked:
        return "no"
    return f"until {when(until)}" if until else "yes" + (f" ({reason})" if reason else "")


# --- users ------------------------------------------------------------------------------------


async def list_users(admin: Admin, as_json: bool, wide: bool = False) -> None:
    users = await rows(admin, "users")
    if as_json:
        print_json(users)
        return
    if not users:
        print("no users yet")
        return
    names = await assistant_names(admin)
    print(table([Column("user", 10, id=True), Column("email", 14), Column("name", 10), "role", "verified",
                 Column("locked", 8), Column("default assistant", 10), "created"],
                [[u["user_id"], u["email"], u["display_name"], u["role"],
                  "yes" if u["email_verified"] else "no",
                  lock_text(u["locked"], u["locked_until"], u["lock_reason"]),
                  named(names.get(u["default_assistant_id"]), u["default_assistant_id"], wide),
                  minute(u["created_ts"])] for u in users], wide=wide))


async def create_user(admin: Admin, email: str, password: str, display_name: str | None,
                      as_json: bool) -> None:
    await admin.bus.declare()
    accts = accounts(admin)
    warning = None
    try:
        user = await accts.register(email, password, display_name)
    except MailError as exc:
        # The account exists; only its verification email was not sent.
        user = await resolve_user(accts, email)
        warning = f"the verification email was not sent: {exc}"
    if as_json:
        print_json({**user_json(user), **({"warning": warning} if warning else {})})
    else:
        print(f"created user {user.email} ({user.user_id}), default assistant {user.default_assistant_id}")
    if warning:
        raise AdminError(warning)


async def lock_user(admin: Admin, who: str, minutes: float | None, as_json: bool) -> None:
    await admin.bus.declare()
    accts = accounts(admin)
    user = await resolve_user(accts, who)
    until = time.time_ns() + int(minutes * 60e9) if minutes else None
    user = await accts.lock(user.user_id, "admin", until)
    if as_json:
        print_json(user_json(user))
    else:
        print(f"locked {user.email} ({user.user_id}) "
              + (f"until {when(until)}" if until else "until unlocked")
              + "; their tokens are revoked")


async def unlock_user(admin: Admin, who: str, as_json: bool) -> None:
    await admin.bus.declare()
    accts = accounts(admin)
    user = await accts.unlock((await resolve_user(accts, who)).user_id)
    if as_json:
        print_json(user_json(user))
    else:
        print(f"unlocked {user.email} ({user.user_id})")


async def set_role(admin: Admin, who: str, role: Role, as_json: bool) -> None:
    await admin.bus.declare()
    accts = accounts(admin)
    user = await accts.set_role((await resolve_user(accts, who)).user_id, role)
    if as_json:
        print_json(user_json(user))
    else:
        print(f"{user.email} ({user.user_id}) is now {'an operator' if role == 'operator' else 'a user'}")


# --- assistants -------------------------------------------------------------------------------


async def _owner(admin: Admin, who: str | None) -> UserState | None:
    if who is None:
        return None
    return await resolve_user(accounts(admin), who)


async def _emails(admin: Admin) -> dict[str, str]:
    return {u["user_id"]: u["email"] for u in await rows(admin, "users")}


async def assistant_names(admin: Admin) -> dict[str, str]:
    """Assistant id → name, for the columns that name one."""
    return {a["assistant_id"]: a["name"] for a in await rows(admin, "all_assistants")}


class _Listing(NamedTuple):
    found: list[dict[str, Any]]
    emails: dict[str, str]  # owner id → email, for the owner column


async def _listing(admin: Admin, who: str | None, what: str, owner_key: str,
                   as_json: bool) -> _Listing | None:
    """One user's `what` (or everybody's), with the owners' emails; None once printed whole."""
    owner = await _owner(admin, who)
    found = (await rows(admin, what, **{owner_key: owner.user_id}) if owner
             else await rows(admin, f"all_{what}"))
    if what == "assistants":  # groups of settings (turn) as objects, not their stored JSON
        found = [{**a, **msgspec.to_builtins(settings_of(a))} for a in found]
    if as_json:
        print_json(found)
        return None
    if not found:
        none = {"assistants": "no assistants yet", "devices": "no devices bound"}[what]
        print(f"{owner.email} has no {what}" if owner else none)
        return None
    emails = {owner.user_id: owner.email} if owner else await _emails(admin)
    return _Listing(found, emails)


async def list_assistants(admin: Admin, who: str | None, as_json: bool, wide: bool = False) -> None:
    listing = await _listing(admin, who, "assistants", "owner_id", as_json)
    if listing is None:
        return
    found, emails = listing
    print(table([Column("assistant", 10, id=True), Column("owner", 12), Column("name", 10),
                 Column("persona", 10), Column("llm/asr/tts", 14), Column("tools", 8), "updated"],
                [[a["assistant_id"], emails.get(a["owner_id"], a["owner_id"]) or "(system)",
                  a["name"], shorten(a["persona"], 200 if wide else 32), f"{a['llm']}/{a['asr']}/{a['tts']}",
                  ",".join(a["tools"] or []), minute(a["updated_ts"])] for a in found], wide=wide))


def _body(settings: dict[str, Any], kind: Any) -> Any:
    """The settings given as the API's body `kind` checks them (its limits); not strict, so
    the turn settings, given as text, are read as their numbers."""
    try:
        return msgspec.convert(settings, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise AdminError(f"invalid assistant: {invalid(exc, kind)}") from None


async def create_assistant(admin: Admin, who: str, settings: dict[str, Any], as_json: bool) -> None:
    body = _body(settings, AssistantCreate)
    await admin.bus.declare()
    owner = await resolve_user(accounts(admin), who)
    values = msgspec.structs.asdict(body)
    assistant_id = await Assistants(admin.bus, admin.config).create(owner.user_id, values)
    if as_json:
        print_json({"assistant_id": assistant_id, "owner_id": owner.user_id,
                    **msgspec.to_builtins(values)})
    else:
        print(f"created assistant {assistant_id} ({values['name']!r}) for {owner.email}")


async def update_assistant(admin: Admin, assistant_id: str, settings: dict[str, Any], as_json: bool) -> None:
    """Change the settings given of any assistant (its owner's, or the system's), as its
    owner's PATCH would; the turn settings given change and the others keep their values."""
    changes = patch_changes(_body(settings, AssistantPatch))
    if not changes:
        raise AdminError("nothing to change: give a setting (see --help)")
    await admin.bus.declare()
    try:
        state = await load_assistant(admin.bus, assistant_id)
    except ValueError:  # not an id
        state = None
    if state is None or state.deleted:
        raise NotFound("assistant", assistant_id)
    await Assistants(admin.bus, admin.config).update(state.owner_id, assistant_id, changes)
    await show_assistant(admin, assistant_id, as_json, f"updated assistant {assistant_id}")


async def show_assistant(admin: Admin, assistant_id: str, as_json: bool, title: str | None = None) -> None:
    """Its settings, and the turn-taking in force: its own turn settings over the configuration's."""
    from actors.asr.settings import TurnRules

    try:
        columns, found = await run_query(admin.bus, admin.data_dir, "assistant_settings",
                                         {"assistant_id": assistant_id}, fresh=True)
    except QueryError as exc:
        raise AdminError(str(exc)) from None
    if not found:
        raise NotFound("assistant", assistant_id)
    row = dict(zip(columns, found[0], strict=True))
    settings = settings_of(row)
    own: TurnSettings | None = settings["turn"]
    asr = admin.config.asr
    rules = TurnRules.of(asr.turn, asr.barge_in_min_ms, own)
    set_here = {k for k, v in msgspec.structs.asdict(own).items() if v is not None} if own else set()
    in_force = {f: getattr(rules, f) for f in TurnSettings.__struct_fields__}
    in_force["backchannels"] = (own.backchannels if own and own.backchannels is not None
                                else asr.turn.backchannels)
    if as_json:
        print_json({"assistant_id": assistant_id, "owner_id": row["owner_id"],
                    **msgspec.to_builtins(settings), "turn_in_force": in_force,
                    "created_ts": row["created_ts"], "updated_ts": row["updated_ts"]})
        return
    owner = (await _emails(admin)).get(row["owner_id"], row["owner_id"]) if row["owner_id"] else "(system)"
    lines = [title or f"assistant {assistant_id}", f"  owner      {owner}"]
    for name in ("name", "persona", "greeting", "voice", "llm", "asr", "tts", "language"):
        lines.append(f"  {name:<10} {shorten(settings[name], 200) if settings[name] else '-'}")
    for name in ("tools", "documents"):
        lines.append(f"  {name:<10} {', '.join(settings[name]) or '-'}")
    lines.append("  turn-taking (set here, or the configuration's [asr.turn])")
    for name, value in in_force.items():
        shown = ", ".join(value) if isinstance(value, list) else str(value)
        where = "set here" if name in set_here else "configuration"
        lines.append(f"    {name:<30} {shorten(shown, 200):<12} ({where})")
    lines.append(f"  updated    {when(row['updated_ts'])}")
    print("\n".join(lines))


# --- devices ----------------------------------------------------------------------------------


async def list_devices(admin: Admin, who: str | None, as_json: bool, wide: bool = False) -> None:
    listing = await _listing(admin, who, "devices", "user_id", as_json)
    if listing is None:
        return
    found, emails = listing
    names = await assistant_names(admin)
    print(table([Column("device", 12, id=True), Column("owner", 14), Column("assistant", 10),
                 Column("name", 10), "bound"],
                [[d["device_id"], emails.get(d["user_id"], d["user_id"]),
                  named(names.get(d["assistant_id"]), d["assistant_id"], wide), d["name"],
                  minute(d["bound_ts"])] for d in found], wide=wide))


async def bind_device(admin: Admin, code: str, who: str, assistant_id: str | None, name: str | None,
                      as_json: bool) -> None:
    try:  # the API's own limits (the code's and name's lengths)
        body = msgspec.convert({"code": code, "assistant_id": assistant_id, "name": name}, DeviceBind)
    except msgspec.ValidationError as exc:
        raise AdminError(f"invalid binding: {invalid(exc)}") from None
    await admin.bus.declare()
    accts = accounts(admin)
    owner = await resolve_user(accts, who)
    chosen = body.assistant_id or owner.default_assistant_id
    if chosen is None:
        raise AdminError(f"{owner.email} has no default assistant: name one with --assistant")
    await Assistants(admin.bus, admin.config).owned(owner.user_id, chosen)
    devices = Devices(admin.bus, accts.tokens, admin.config.auth)
    binding, _ = await devices.bind(owner, body.code, chosen, body.name)
    if as_json:
        print_json({"device_id": binding.device_id, "user_id": owner.user_id,
                    "assistant_id": binding.assistant_id, "name": name})
    else:
        print(f"bound device {binding.device_id} to {owner.email}'s assistant {chosen}; "
              "it collects its token when it asks again")
