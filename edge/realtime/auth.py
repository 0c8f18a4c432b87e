"""Who a real-time connection speaks for: an access token (browsers, integrations), a
device token (xiaozhi), or nobody (anonymous, when `edge.anonymous` allows it)."""

from __future__ import annotations

from edge.errors import ApiError, domain_refusals, unauthorized
from edge.realtime.session import Caller
from edge.services import Services

# What xiaozhi firmware sends before it was given a token: no token at all.
PLACEHOLDER_TOKENS = ("", "test-token")


def bearer(header: str | None, query_token: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` header, else of a `token` query parameter;
    None for none, an empty one or a placeholder (anonymous where that is allowed)."""
    token = query_token
    if header:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise unauthorized("token_invalid", "the Authorization header must be 'Bearer <token>'")
    token = (token or "").strip()
    return None if token.lower() in PLACEHOLDER_TOKENS else token


async def user_caller(services: Services, token: str | None, assistant_id: str | None) -> Caller:
    """A browser or integration: the user's chosen assistant (theirs), else their default."""
    if token is None:
        if not services.config.edge.anonymous:
            raise unauthorized("token_missing", "sign in: this edge accepts no anonymous sessions")
        return Caller()
    with domain_refusals():
        principal = await services.tokens.verify(token)
        user = await services.accounts.require(principal.user_id)
        chosen = assistant_id or user.default_assistant_id
        if chosen is None:
            raise ApiError(404, "not_found", "no assistant to talk to")
        await services.assistants.owned(user.user_id, chosen)
    return Caller(user_id=user.user_id, assistant_id=chosen)


async def device_caller(services: Services, token: str | None, device_id: str,
                        client_id: str | None) -> Caller:
    """A xiaozhi device: its token names its owner and assistant; without one (and when
    anonymous connections are allowed) it talks to the default assistant."""
    if token is None:
        if not services.config.edge.anonymous:
            raise unauthorized("token_missing", "this device is not activated: bind it first")
        return Caller(device_id=device_id.lower(), client_id=client_id)
    with domain_refusals():
        grant = await services.tokens.verify_device(token, device_id)
        # A lock suspends the owner's devices too (their tokens outlive the lock's revocation
        # record); after an unlock they connect again without being bound anew.
        owner = await services.accounts.require(grant.user_id)
        if owner.is_locked():
            raise services.accounts.locked_error(owner)
    return Caller(user_id=grant.user_id, assistant_id=grant.assistant_id, device_id=grant.device_id,
                  client_id=client_id)
