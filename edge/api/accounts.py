"""/api/v1/auth/* and /api/v1/me."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from edge.api.endpoint import Call, Endpoint, json_response
from edge.api.models import Login, Logout, Refresh, Register, TokenPair, User, VerifyEmail
from edge.api.pages import iso
from edge.errors import ApiError


def user_body(row: dict[str, Any]) -> User:
    return User(user_id=row["user_id"], email=row["email"], display_name=row["display_name"],
                email_verified=row["email_verified"], locked=row["locked"],
                default_assistant_id=row["default_assistant_id"], created_at=iso(row["created_ts"]),
                role=row["role"])


async def current_user(call: Call) -> User:
    rows = await call.services.query("user", user_id=call.user_id)
    if not rows:
        raise ApiError(404, "not_found", "this account no longer exists")
    return user_body(rows[0])


async def register(call: Call) -> Response:
    body: Register = call.body
    user = await call.services.accounts.register(body.email, body.password, body.display_name)
    rows = await call.services.query("user", user_id=user.user_id)
    return json_response(user_body(rows[0]), 201, {"Location": "/api/v1/me"})


async def login(call: Call) -> Response:
    body: Login = call.body
    return json_response(await call.services.accounts.login(body.email, body.password))


async def refresh(call: Call) -> Response:
    body: Refresh = call.body
    return json_response(await call.services.tokens.refresh(body.refresh_token))


async def logout(call: Call) -> Response:
    body: Logout | None = call.body
    assert call.principal is not None
    await call.services.tokens.revoke(call.principal)
    if body is not None and body.refresh_token:
        family = await call.services.tokens.refresh_family(body.refresh_token, call.user_id)
        if family is not None:
            await call.services.tokens.revoke_family(family)
    return Response(status_code=204)


async def me(call: Call) -> Response:
    return json_response(await current_user(call))


async def verify_email(call: Call) -> Response:
    body: VerifyEmail = call.body
    await call.services.accounts.verify_email(await call.services.accounts.require(call.user_id), body.code)
    return json_response(await current_user(call))


async def resend_verification(call: Call) -> Response:
    await call.services.accounts.send_verification(await call.services.accounts.require(call.user_id))
    return Response(status_code=202)


ENDPOINTS = (
    Endpoint("POST", "/api/v1/auth/register", register, "Create an account", "auth", status=201,
             body=Register, answer=User, auth=False, rate_limited=True, errors=(409, 422, 429)),
    Endpoint("POST", "/api/v1/auth/login", login, "Log in: an access and a refresh token", "auth",
             body=Login, answer=TokenPair, auth=False, rate_limited=True, errors=(401, 423, 429)),
    Endpoint("POST", "/api/v1/auth/refresh", refresh, "Trade a refresh token for a new pair", "auth",
             body=Refresh, answer=TokenPair, auth=False, rate_limited=True, errors=(401, 429)),
    Endpoint("POST", "/api/v1/auth/logout", logout, "Revoke this login's tokens", "auth", status=204,
             body=Logout | None),
    Endpoint("POST", "/api/v1/auth/verify-email", verify_email, "Confirm the emailed code", "auth",
             body=VerifyEmail, answer=User, errors=(404, 422)),
    Endpoint("POST", "/api/v1/auth/verify-email/resend", resend_verification, "Send a new code", "auth",
             status=202, errors=(409, 503)),
    Endpoint("GET", "/api/v1/me", me, "The logged-in account", "auth", answer=User, errors=(404,)),
)
