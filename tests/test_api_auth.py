"""Accounts and authentication over the real REST API: a uvicorn server on a free port,
a real NATS JetStream and read store (tests/api_harness.py).

Each rule is checked by what a client sees (status, error code, headers) and, where it
matters, by what was stored: the user's events and the KV records behind them."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest

from bus import kv
from bus.log import load
from bus.server import EmbeddedServer, free_port
from domain.accounts import CREDENTIALS
from domain.keys import KEY_FILE, signing_key
from schemas import UserEmailVerified, UserLocked, UserRegistered, UserUnlocked, new_id
from settings.config import Argon2Settings, AuthSettings, Config, ConfigError, SmtpSettings, parse
from tests.api_harness import Api, api_config, serve_api

PASSWORD = "correct horse 9"
REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
VERIFY = "/api/v1/auth/verify-email"
RESEND = "/api/v1/auth/verify-email/resend"
ME = "/api/v1/me"
USER_FIELDS = {"user_id", "email", "display_name", "email_verified", "locked", "role",
               "default_assistant_id", "created_at"}


# --- helpers -----------------------------------------------------------------------------


def new_email(name: str = "u") -> str:
    return f"{name}{new_id().lower()}@example.com"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an error answer of the one shape; its details."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]["details"]


async def register(c: httpx.AsyncClient, email: str, password: str = PASSWORD,
                   **extra: Any) -> dict[str, Any]:
    r = await c.post(REGISTER, json={"email": email, "password": password, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def login(c: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await c.post(LOGIN, json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


async def me(c: httpx.AsyncClient, token: str) -> httpx.Response:
    return await c.get(ME, headers=bearer(token))


async def refresh(c: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await c.post(REFRESH, json={"refresh_token": refresh_token})


async def user_events(api: Api, user_id: str) -> list[Any]:
    entries, _ = await load(api.services.bus, "user", user_id)
    return [e.event for e in entries]


def served(module_nats: EmbeddedServer, tmp_path: Path, config: Config, name: str = "edge"
           ) -> Any:
    """Another edge over the module's NATS with its own settings (and own signing key)."""
    data = tmp_path / name
    data.mkdir(exist_ok=True)
    return serve_api(module_nats.url, data, config)


def with_edge(config: Config, **edge: Any) -> Config:
    config.edge = msgspec.structs.replace(config.edge, **edge)
    return config


async def until(check: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll `check()` until it returns something truthy (or fail after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(interval)


# --- registration --------------------------------------------------------------------------


async def test_register_answers_the_new_account(api: Api) -> None:
    c = api.client
    email = f"Ada.{new_id().lower()}@Example.COM"
    r = await c.post(REGISTER, json={"email": email, "password": PASSWORD, "display_name": "Ada"})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/api/v1/me"
    user = r.json()
    assert set(user) == USER_FIELDS
    local = email.split("@")[0]
    assert user["email"] == f"{local}@example.com"  # the domain is lowercased, the local part kept
    assert user["display_name"] == "Ada"
    assert user["email_verified"] is False and user["locked"] is False
    assert user["default_assistant_id"]
    assert datetime.fromisoformat(user["created_at"]).tzinfo is not None
    events = await user_events(api, user["user_id"])
    assert [type(e) for e in events] == [UserRegistered]
    assert events[0].default_assistant_id == user["default_assistant_id"]
    # The default assistant exists and belongs to the new user.
    tokens = await login(c, email)
    r = await c.get(f"/api/v1/assistants/{user['default_assistant_id']}",
                    headers=bearer(tokens["access_token"]))
    assert r.status_code == 200, r.text
    r = await me(c, tokens["access_token"])
    assert r.status_code == 200 and r.json() == user


async def test_register_refuses_a_taken_email_whatever_its_case(api: Api) -> None:
    c = api.client
    email = new_email("dup")
    await register(c, email)
    local, _, domain = email.partition("@")
    for variant in (email, f"{local}@{domain.upper()}", email.upper(), f"  {email} "):
        details = error(await c.post(REGISTER, json={"email": variant, "password": "another pass 7"}),
                        409, "email_taken")
        assert details == {"field": "email"}
    # Logging in is as case-insensitive as registering.
    await login(c, f"{local}@{domain.upper()}")


@pytest.mark.parametrize(("password", "rule"), [
    ("sh0rt!", "The password must be at least 10 characters long."),
    ("password123", "The password is too common or too repetitive."),
    ("abab1abab1ab", "The password is too common or too repetitive."),
    ("onlyletterspassword", "The password must mix letters with at least one digit or symbol."),
    ("12345678901234", "The password must mix letters with at least one digit or symbol."),
    ("x" * 300 + "1", "The password must be at most 256 characters long."),
    ("margaretz-rocks-9", "The password must not contain the name in the email address."),
])
async def test_register_refuses_weak_passwords(api: Api, password: str, rule: str) -> None:
    c = api.client
    email = f"margaretz@{new_id().lower()}.example.com"
    refused = await c.post(REGISTER, json={"email": email, "password": password})
    details = error(refused, 422, "weak_password")
    assert rule in details["rules"]
    # Each reason is a sentence of its own, and the message is those sentences.
    assert all(r[0].isupper() and r.endswith(".") for r in details["rules"])
    assert refused.json()["error"]["message"] == " ".join(details["rules"])
    # Nothing was claimed: the email can still be registered with a good password.
    await register(c, email)


async def test_register_refuses_invalid_emails(api: Api) -> None:
    c = api.client
    for email in ("not-an-email", "a@b", "a b@example.com", "@example.com", "a@@example.com",
                  f"{'x' * 65}@example.com", ""):
        details = error(await c.post(REGISTER, json={"email": email, "password": PASSWORD}),
                        422, "invalid_email")
        assert details == {"field": "email"}
    # At login an invalid email is just wrong credentials.
    error(await c.post(LOGIN, json={"email": "not-an-email", "password": PASSWORD}),
          401, "invalid_credentials")


async def test_request_bodies_are_validated(api: Api) -> None:
    c = api.client
    email = new_email()
    error(await c.post(REGISTER, json={"email": email, "password": PASSWORD, "admin": True}),
          422, "validation_failed")
    details = error(await c.post(REGISTER, json={"email": email, "password": 1234567890}),
                    422, "validation_failed")
    assert details["at"] == "$.password"
    error(await c.post(REGISTER, json={"email": email}), 422, "validation_failed")
    error(await c.post(REGISTER, json=[email, PASSWORD]), 422, "validation_failed")
    error(await c.post(REGISTER, json={"email": email, "password": PASSWORD, "display_name": ""}),
          422, "validation_failed")
    error(await c.post(REGISTER, content=b'{"email": "a@example.com", "password": ',
                       headers={"Content-Type": "application/json"}), 400, "malformed_json")
    error(await c.post(REGISTER, content=b"", headers={"Content-Type": "application/json"}),
          422, "validation_failed")
    error(await c.post(REGISTER, content=msgspec.json.encode({"email": email, "password": PASSWORD}),
                       headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    error(await c.post(REGISTER, data={"email": email, "password": PASSWORD}), 415, "unsupported_media_type")
    # None of these created the account.
    await register(c, email)


async def test_bodies_over_the_limit_are_refused(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    async with served(module_nats, tmp_path, with_edge(api_config(), max_body_bytes=256)) as small:
        c = small.client
        email = new_email()
        big = {"email": email, "password": "p4ssw0rd!" + "x" * 300}
        assert error(await c.post(REGISTER, json=big), 413, "body_too_large") == {"limit": 256}

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for part in (b'{"email": "' + email.encode() + b'", ', b'"password": "', b"y" * 400, b'"}'):
                yield part

        r = await c.post(REGISTER, content=chunks(), headers={"Content-Type": "application/json"})
        error(r, 413, "body_too_large")
        await register(c, email)  # a body within the limit still works, and the email was free


# --- login and access tokens ------------------------------------------------------------------


async def test_login_returns_a_token_pair_that_opens_me(api: Api) -> None:
    c = api.client
    email = new_email()
    user = await register(c, email)
    pair = await login(c, email)
    assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert pair["token_type"] == "Bearer"
    assert pair["expires_in"] == int(api.services.config.auth.access_ttl)
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user["user_id"] and claims["typ"] == "access"
    assert claims["exp"] - time.time() >= pair["expires_in"] - 5
    r = await me(c, pair["access_token"])
    assert r.status_code == 200, r.text
    assert r.json()["user_id"] == user["user_id"]
    # A second login is a second, independent pair.
    other = await login(c, email)
    assert other["access_token"] != pair["access_token"]
    assert other["refresh_token"] != pair["refresh_token"]


async def test_wrong_credentials_look_the_same(api: Api) -> None:
    c = api.client
    email = new_email()
    await register(c, email)
    wrong = await c.post(LOGIN, json={"email": email, "password": "wrong horse 9"})
    unknown = await c.post(LOGIN, json={"email": new_email(), "password": PASSWORD})
    error(wrong, 401, "invalid_credentials")
    error(unknown, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"].startswith("Bearer")


async def test_requests_without_a_valid_token_are_refused(api: Api, module_nats: EmbeddedServer,
                                                          tmp_path: Path) -> None:
    c = api.client
    email = new_email()
    user = await register(c, email)
    pair = await login(c, email)
    r = await c.get(ME)
    error(r, 401, "token_missing")
    assert r.headers["www-authenticate"].startswith("Bearer")
    error(await c.get(ME, headers=bearer("garbage")), 401, "token_invalid")
    error(await c.get(ME, headers={"Authorization": f"Basic {pair['access_token']}"}), 401, "token_invalid")
    error(await c.get(ME, headers={"Authorization": "Bearer"}), 401, "token_invalid")
    # The refresh token is no access token.
    error(await me(c, pair["refresh_token"]), 401, "token_invalid")
    # Well-formed claims signed with another key, or with none.
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    forged = jwt.encode(claims, "another key, of at least thirty-two bytes", algorithm="HS256")
    error(await me(c, forged), 401, "token_invalid")
    error(await me(c, jwt.encode(claims, None, algorithm="none")), 401, "token_invalid")
    # A tampered payload under the real signature.
    head, _, sig = pair["access_token"].split(".")
    evil = jwt.utils.base64url_encode(msgspec.json.encode({**claims, "sub": new_id()})).decode()
    error(await me(c, f"{head}.{evil}.{sig}"), 401, "token_invalid")
    # A token issued by an edge with a different signing key.
    async with served(module_nats, tmp_path, api_config()) as elsewhere:
        foreign = await login(elsewhere.client, email)
        assert (await me(elsewhere.client, foreign["access_token"])).status_code == 200
        error(await me(c, foreign["access_token"]), 401, "token_invalid")
    assert (await me(c, pair["access_token"])).json()["user_id"] == user["user_id"]


async def test_access_tokens_expire(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    async with served(module_nats, tmp_path, api_config(access_ttl=2)) as short:
        c = short.client
        email = new_email()
        await register(c, email)
        pair = await login(c, email)
        assert pair["expires_in"] == 2
        assert (await me(c, pair["access_token"])).status_code == 200

        async def expired() -> httpx.Response | None:
            r = await me(c, pair["access_token"])
            return r if r.status_code != 200 else None

        error(await until(expired, timeout=4), 401, "token_expired")
        # The refresh token outlives it and brings a working access token.
        r = await refresh(c, pair["refresh_token"])
        assert r.status_code == 200, r.text
        assert (await me(c, r.json()["access_token"])).status_code == 200


# --- logout and refresh -----------------------------------------------------------------------


async def test_logout_revokes_the_login(api: Api) -> None:
    c = api.client
    email = new_email()
    await register(c, email)
    first, second = await login(c, email), await login(c, email)
    r = await c.post(LOGOUT, headers=bearer(first["access_token"]),
                     json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 204, r.text
    error(await me(c, first["access_token"]), 401, "token_revoked")
    error(await refresh(c, first["refresh_token"]), 401, "token_revoked")
    error(await c.post(LOGOUT, headers=bearer(first["access_token"])), 401, "token_revoked")
    # Another login of the same user is untouched, and logging in again works.
    assert (await me(c, second["access_token"])).status_code == 200
    third = await login(c, email)
    assert (await me(c, third["access_token"])).status_code == 200
    # Logout without a body revokes that login's refresh token too (same family).
    r = await c.post(LOGOUT, headers=bearer(third["access_token"]))
    assert r.status_code == 204, r.text
    error(await refresh(c, third["refresh_token"]), 401, "token_revoked")
    assert (await refresh(c, second["refresh_token"])).status_code == 200


async def test_logout_cannot_revoke_someone_elses_login(api: Api) -> None:
    c = api.client
    mallory, victim = new_email("mallory"), new_email("victim")
    await register(c, mallory)
    await register(c, victim)
    theirs, mine = await login(c, victim), await login(c, mallory)
    # Only the id part of the victim's refresh token, or all of it: neither is Mallory's login.
    rid = theirs["refresh_token"].split(".")[0]
    for token in (f"{rid}.guessed", theirs["refresh_token"]):
        r = await c.post(LOGOUT, headers=bearer(mine["access_token"]), json={"refresh_token": token})
        assert r.status_code == 204, r.text
        mine = await login(c, mallory)
    assert (await me(c, theirs["access_token"])).status_code == 200
    assert (await refresh(c, theirs["refresh_token"])).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    c = api.client
    email = new_email()
    await register(c, email)
    first = await login(c, email)
    bystander = await login(c, email)  # another login: another family
    r = await refresh(c, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert set(second) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    # The old access token lives on until it expires; the new one works.
    assert (await me(c, first["access_token"])).status_code == 200
    assert (await me(c, second["access_token"])).status_code == 200
    old = jwt.decode(first["access_token"], options={"verify_signature": False})
    new = jwt.decode(second["access_token"], options={"verify_signature": False})
    assert new["fam"] == old["fam"] and new["jti"] != old["jti"]
    # The used refresh token again: stolen. The whole login is revoked.
    error(await refresh(c, first["refresh_token"]), 401, "refresh_token_reused")
    error(await me(c, second["access_token"]), 401, "token_revoked")
    error(await me(c, first["access_token"]), 401, "token_revoked")
    error(await refresh(c, second["refresh_token"]), 401, "token_revoked")
    # Other logins are not.
    assert (await me(c, bystander["access_token"])).status_code == 200
    assert (await refresh(c, bystander["refresh_token"])).status_code == 200


async def test_refresh_refuses_unknown_tokens_without_spending_them(api: Api) -> None:
    c = api.client
    email = new_email()
    await register(c, email)
    pair = await login(c, email)
    rid, _, secret = pair["refresh_token"].partition(".")
    for bad in ("garbage", f"{rid}.{secret[:-2]}xx", f"{rid}.", f"{new_id()}.{secret}", f"../{rid}.{secret}",
                pair["access_token"]):
        error(await refresh(c, bad), 401, "refresh_token_invalid")
    r = await refresh(c, pair["refresh_token"])
    assert r.status_code == 200, r.text


async def test_racing_refreshes_with_one_token_let_one_win(api: Api) -> None:
    c = api.client
    email = new_email()
    await register(c, email)
    pair = await login(c, email)
    answers = await asyncio.gather(*(refresh(c, pair["refresh_token"]) for _ in range(2)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 401], [r.text for r in answers]
    loser = next(r for r in answers if r.status_code == 401)
    error(loser, 401, "refresh_token_reused")
    winner = next(r for r in answers if r.status_code == 200).json()
    error(await me(c, winner["access_token"]), 401, "token_revoked")


# --- lockout and rate limits ---------------------------------------------------------------


async def test_repeated_failed_logins_lock_the_account_for_a_while(module_nats: EmbeddedServer,
                                                                   tmp_path: Path) -> None:
    config = api_config(lockout_failures=5, lockout_seconds=2)
    async with served(module_nats, tmp_path, config) as edge:
        c = edge.client
        email = new_email()
        user = await register(c, email)
        wrong = {"email": email, "password": "wrong horse 9"}

        # Four failures, then a success, resets the count: four more do not lock.
        for _ in range(2):
            for _ in range(4):
                error(await c.post(LOGIN, json=wrong), 401, "invalid_credentials")
            await login(c, email)

        for _ in range(5):
            error(await c.post(LOGIN, json=wrong), 401, "invalid_credentials")
        r = await c.post(LOGIN, json={"email": email, "password": PASSWORD})
        details = error(r, 423, "account_locked")
        assert details["reason"] == "failed_logins"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert details["retry_after"] == int(r.headers["retry-after"])
        error(await c.post(LOGIN, json=wrong), 423, "account_locked")

        events = await user_events(edge, user["user_id"])
        locks = [e for e in events if isinstance(e, UserLocked)]
        assert len(locks) == 1 and locks[0].reason == "failed_logins"
        assert locks[0].until_ts is not None and locks[0].until_ts > time.time_ns()
        rows = await edge.services.query("user", user_id=user["user_id"])
        assert rows[0]["locked"] is True and rows[0]["lock_reason"] == "failed_logins"

        async def unlocked() -> httpx.Response | None:
            r = await c.post(LOGIN, json={"email": email, "password": PASSWORD})
            if r.status_code == 423:
                return None
            return r

        r = await until(unlocked, timeout=5, interval=0.25)
        assert r.status_code == 200, r.text
        assert (await me(c, r.json()["access_token"])).json()["locked"] is False
        # The lock is over and the count starts again from zero.
        for _ in range(4):
            error(await c.post(LOGIN, json=wrong), 401, "invalid_credentials")
        await login(c, email)


async def test_the_client_ip_is_rate_limited(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = api_config()
    config.auth = msgspec.structs.replace(config.auth, rate_limit=3, rate_window=60)
    async with served(module_nats, tmp_path, config) as edge:
        c = edge.client
        email = new_email()
        await register(c, email)  # 1
        pair = await login(c, email)  # 2
        error(await c.post(LOGIN, json={"email": email, "password": "wrong horse 9"}),
              401, "invalid_credentials")  # 3
        for attempt in (c.post(LOGIN, json={"email": email, "password": PASSWORD}),
                        c.post(REGISTER, json={"email": new_email(), "password": PASSWORD}),
                        refresh(c, pair["refresh_token"]),
                        c.post("/webrtc/offer", json={"sdp": "v=0", "type": "offer"})):
            r = await attempt
            details = error(r, 429, "rate_limited")
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert details["retry_after"] == int(r.headers["retry-after"])
        # Endpoints outside the limit still answer.
        assert (await me(c, pair["access_token"])).status_code == 200
        r = await c.post(LOGOUT, headers=bearer(pair["access_token"]))
        assert r.status_code == 204, r.text


async def test_forwarded_for_is_not_trusted_by_default(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = api_config()
    config.auth = msgspec.structs.replace(config.auth, rate_limit=1, rate_window=60)
    assert not config.auth.trust_forwarded_for
    async with served(module_nats, tmp_path, config) as edge:
        c = edge.client
        await register(edge.client, new_email())
        r = await c.post(REGISTER, json={"email": new_email(), "password": PASSWORD},
                         headers={"X-Forwarded-For": "203.0.113.9"})
        error(r, 429, "rate_limited")


# --- email verification ---------------------------------------------------------------------


CODE = re.compile(r"code for (\S+): (\d{6})")


def logged_code(caplog: pytest.LogCaptureFixture, email: str) -> str:
    codes = [m.group(2) for rec in caplog.records if rec.name == "vagent.edge.mail"
             and (m := CODE.search(rec.getMessage())) and m.group(1) == email]
    assert codes, f"no code logged for {email}"
    return codes[-1]


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_wrong_email_verification_mode_is_refused_when_the_settings_are_read() -> None:
    with pytest.raises(ConfigError, match=r"auth.email_verification"):
        parse('[auth]\nemail_verification = "sms"\n')
    assert parse('[auth]\nemail_verification = "log"\n').auth.email_verification == "log"


async def test_email_verification_by_log(module_nats: EmbeddedServer, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vagent.edge.mail")
    async with served(module_nats, tmp_path, api_config(email_verification="log")) as edge:
        c = edge.client
        email = new_email()
        user = await register(c, email)
        code = logged_code(caplog, email)
        token = (await login(c, email))["access_token"]
        assert (await me(c, token)).json()["email_verified"] is False

        details = error(await c.post(VERIFY, headers=bearer(token), json={"code": other_code(code)}),
                        422, "code_invalid")
        assert details == {"field": "code"}
        error(await c.post(VERIFY, headers=bearer(token), json={"code": ""}), 422, "validation_failed")
        error(await c.post(VERIFY, json={"code": code}), 401, "token_missing")
        r = await c.post(VERIFY, headers=bearer(token), json={"code": f" {code} "})
        assert r.status_code == 200, r.text
        assert r.json()["email_verified"] is True
        assert (await me(c, token)).json()["email_verified"] is True
        events = await user_events(edge, user["user_id"])
        assert [type(e) for e in events] == [UserRegistered, UserEmailVerified]
        assert all(code.encode() not in e.data for e in (await load(edge.services.bus, "user",
                                                                    user["user_id"]))[0])
        error(await c.post(RESEND, headers=bearer(token)), 409, "already_verified")
        # Verifying again changes nothing.
        r = await c.post(VERIFY, headers=bearer(token), json={"code": code})
        assert r.status_code == 200 and r.json()["email_verified"] is True
        assert len(await user_events(edge, user["user_id"])) == 2


async def test_a_code_dies_after_five_wrong_tries(module_nats: EmbeddedServer, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vagent.edge.mail")
    async with served(module_nats, tmp_path, api_config(email_verification="log")) as edge:
        c = edge.client
        email = new_email()
        await register(c, email)
        code = logged_code(caplog, email)
        token = (await login(c, email))["access_token"]
        for _ in range(5):
            error(await c.post(VERIFY, headers=bearer(token), json={"code": other_code(code)}),
                  422, "code_invalid")
        error(await c.post(VERIFY, headers=bearer(token), json={"code": code}), 422, "code_invalid")
        caplog.clear()
        r = await c.post(RESEND, headers=bearer(token))
        assert r.status_code == 202, r.text
        fresh = logged_code(caplog, email)
        r = await c.post(VERIFY, headers=bearer(token), json={"code": fresh})
        assert r.status_code == 200 and r.json()["email_verified"] is True, r.text


async def test_without_verification_configured(api: Api) -> None:
    c = api.client
    h = await api.user()
    error(await c.post(RESEND, headers=h), 409, "verification_disabled")
    error(await c.post(VERIFY, headers=h, json={"code": "123456"}), 422, "code_invalid")


class SmtpSink:
    """Just enough of an SMTP server to take messages (no TLS, no auth)."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SmtpSink:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 sink ESMTP")
        try:
            while line := await reader.readline():
                verb = line.decode().strip().split(" ")[0].upper()
                if verb in ("EHLO", "HELO"):
                    say("250 sink")
                elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                    say("250 ok")
                elif verb == "DATA":
                    say("354 end with <CRLF>.<CRLF>")
                    await writer.drain()
                    data = await reader.readuntil(b"\r\n.\r\n")
                    await self.messages.put(data)
                    say("250 queued")
                elif verb == "QUIT":
                    say("221 bye")
                    await writer.drain()
                    break
                else:
                    say("502 not implemented")
                await writer.drain()
        finally:
            writer.close()


async def test_email_verification_by_smtp(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    async with SmtpSink() as sink:
        config = api_config(email_verification="auto")
        config.auth.smtp = SmtpSettings(host="127.0.0.1", port=sink.port, starttls=False,
                                        sender="vagent <no-reply@example.com>", timeout=5)
        async with served(module_nats, tmp_path, config) as edge:
            c = edge.client
            email = new_email()
            await register(c, email)
            message = (await asyncio.wait_for(sink.messages.get(), 5)).decode()
            assert f"To: {email}" in message
            code = re.search(r"verification code is (\d{6})", message)
            assert code is not None, message
            token = (await login(c, email))["access_token"]
            r = await c.post(VERIFY, headers=bearer(token), json={"code": code.group(1)})
            assert r.status_code == 200 and r.json()["email_verified"] is True, r.text


async def test_a_mail_failure_does_not_fail_registration(module_nats: EmbeddedServer, tmp_path: Path) -> None:
    config = api_config(email_verification="smtp")
    config.auth.smtp = SmtpSettings(host="127.0.0.1", port=free_port(), starttls=False, timeout=2)
    async with served(module_nats, tmp_path, config) as edge:  # nobody listens on that port
        c = edge.client
        email = new_email()
        await register(c, email)  # the account exists; the code can be sent again later
        token = (await login(c, email))["access_token"]
        r = await c.post(RESEND, headers=bearer(token))
        error(r, 503, "mail_unavailable")
        assert r.headers["retry-after"]


# --- stored secrets --------------------------------------------------------------------------


async def test_a_changed_argon2_cost_rehashes_at_login(api: Api, module_nats: EmbeddedServer,
                                                       tmp_path: Path) -> None:
    c = api.client
    bus = api.services.bus
    email = new_email()
    user = await register(c, email)
    before = (await kv.get(bus, CREDENTIALS, user["user_id"]) or b"").decode()
    assert before.startswith("$argon2id$") and "t=1" in before
    await login(c, email)
    assert (await kv.get(bus, CREDENTIALS, user["user_id"]) or b"").decode() == before  # current: kept

    config = api_config()
    config.auth.argon2 = Argon2Settings(time_cost=2, memory_kib=2048, parallelism=1)
    async with served(module_nats, tmp_path, config) as costlier:
        pair = await login(costlier.client, email)
        after = (await kv.get(bus, CREDENTIALS, user["user_id"]) or b"").decode()
        assert after != before and after.startswith("$argon2id$")
        assert "m=2048,t=2,p=1" in after
        assert (await me(costlier.client, pair["access_token"])).status_code == 200
        await login(costlier.client, email)
        error(await costlier.client.post(LOGIN, json={"email": email, "password": "wrong horse 9"}),
              401, "invalid_credentials")
    # The old settings still accept the new hash.
    await login(c, email)


async def test_events_never_hold_passwords_or_tokens(api: Api) -> None:
    c = api.client
    bus = api.services.bus
    email = new_email()
    password = "Unique-Secret-" + new_id()
    user = await register(c, email, password, display_name="Sam")
    pair = await login(c, email, password)
    error(await c.post(LOGIN, json={"email": email, "password": password + "x"}), 401, "invalid_credentials")
    second = (await refresh(c, pair["refresh_token"])).json()
    r = await c.post(LOGOUT, headers=bearer(second["access_token"]),
                     json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 204
    await api.services.accounts.lock(user["user_id"])
    await api.services.accounts.unlock(user["user_id"])
    stored_hash = await kv.get(bus, CREDENTIALS, user["user_id"])
    assert stored_hash
    entries, _ = await load(bus, "user", user["user_id"])
    assert len(entries) == 3  # registered, locked, unlocked
    secrets = [password, password + "x", stored_hash.decode(), *pair.values(), *second.values()]
    secrets = [s for s in secrets if isinstance(s, str) and len(s) > 8]
    secrets += [t.split(".")[1] for t in (pair["refresh_token"], second["refresh_token"])]
    for entry in entries:
        raw = entry.data + msgspec.json.encode(entry.headers)
        for secret in secrets:
            assert secret.encode() not in raw, (secret, entry.subject)
    # Nor does the read model.
    rows = await api.services.query("user", user_id=user["user_id"])
    assert all(password not in str(v) for v in rows[0].values())


# --- administration --------------------------------------------------------------------------


async def test_an_administrators_lock_revokes_tokens_until_unlocked(api: Api) -> None:
    c = api.client
    accounts = api.services.accounts
    email = new_email()
    user = await register(c, email)
    uid = user["user_id"]
    pair, other = await login(c, email), await login(c, email)

    state = await accounts.lock(uid)
    assert state.is_locked()
    error(await me(c, pair["access_token"]), 401, "token_revoked")
    error(await me(c, other["access_token"]), 401, "token_revoked")
    error(await refresh(c, pair["refresh_token"]), 401, "token_revoked")
    r = await c.post(LOGIN, json={"email": email, "password": PASSWORD})
    details = error(r, 423, "account_locked")
    assert details["reason"] == "admin" and "retry-after" not in r.headers
    rows = await api.services.query("user", user_id=uid)
    assert rows[0]["locked"] is True

    state = await accounts.unlock(uid)
    assert not state.is_locked()
    fresh = await login(c, email)  # within the same second as the lock, too
    r = await me(c, fresh["access_token"])
    assert r.status_code == 200 and r.json()["locked"] is False, r.text
    assert (await refresh(c, fresh["refresh_token"])).status_code == 200
    # Tokens from before the lock stay revoked.
    error(await me(c, other["access_token"]), 401, "token_revoked")
    error(await refresh(c, other["refresh_token"]), 401, "token_revoked")
    events = await user_events(api, uid)
    assert [type(e) for e in events] == [UserRegistered, UserLocked, UserUnlocked]
    # Unlocking an unlocked account changes nothing.
    await accounts.unlock(uid)
    assert len(await user_events(api, uid)) == 3


async def test_a_timed_lock_says_when_it_ends(api: Api) -> None:
    c = api.client
    email = new_email()
    user = await register(c, email)
    await api.services.accounts.lock(user["user_id"], reason="abuse", until_ts=time.time_ns() + 120 * 10**9)
    r = await c.post(LOGIN, json={"email": email, "password": PASSWORD})
    details = error(r, 423, "account_locked")
    assert details["reason"] == "abuse"
    assert 110 <= int(r.headers["retry-after"]) <= 120


# --- the signing key -------------------------------------------------------------------------


def test_the_signing_key_is_made_once_even_by_racing_processes(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAGENT_JWT_SECRET", raising=False)
    monkeypatch.delenv("VAGENT_SECRETS_FILE", raising=False)
    settings = AuthSettings()
    for attempt in range(5):
        data = tmp_path / f"race{attempt}"
        data.mkdir()
        start = threading.Barrier(8)

        def make(data: Path = data, start: threading.Barrier = start) -> bytes:
            start.wait()
            return signing_key(settings, data)

        with ThreadPoolExecutor(8) as pool:
            keys = list(pool.map(lambda _: make(), range(8)))
        assert len(set(keys)) == 1 and len(keys[0]) >= 32
        assert (data / KEY_FILE).read_bytes() == keys[0]
        assert (data / KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in data.iterdir()) == [KEY_FILE]  # no temporary files left
    # An empty key file is refused rather than signing with an empty key.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / KEY_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        signing_key(settings, tmp_path / "empty")


def test_a_configured_signing_key_must_be_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAGENT_JWT_SECRET", "short")
    with pytest.raises(ValueError, match="at least 32"):
        signing_key(AuthSettings(), tmp_path)
    monkeypatch.setenv("VAGENT_JWT_SECRET", "k" * 40)
    assert signing_key(AuthSettings(), tmp_path) == b"k" * 40
    assert not (tmp_path / KEY_FILE).exists()
