"""The edge's one mapping from a domain refusal's kind to its HTTP status and headers."""

from __future__ import annotations

import pytest

from domain import errors
from edge.errors import ApiError, domain_refusals, from_domain


@pytest.mark.parametrize(("error", "status"), [
    (errors.Invalid("weak_password", "m"), 422), (errors.NotFound("assistant", "a1"), 404),
    (errors.Unauthorized("token_invalid", "m"), 401), (errors.Conflict("conflict", "m"), 409),
    (errors.Expired("activation_expired", "m"), 410),
    (errors.Locked("account_locked", "m"), 423), (errors.TooLarge("quota_exceeded", "m"), 413),
    (errors.Unsupported("unsupported_type", "m"), 415), (errors.Unavailable("busy", "m"), 503),
])
def test_each_kind_has_its_status(error: errors.DomainError, status: int) -> None:
    api = from_domain(error)
    assert (api.status, api.code, api.message, api.details) == (status, error.code, error.message,
                                                                 error.details)


def test_headers_follow_the_refusal() -> None:
    assert from_domain(errors.Unauthorized("token_expired", "m")).headers == {
        "WWW-Authenticate": 'Bearer realm="vagent"'}
    assert from_domain(errors.Unavailable("busy", "m", {"retry_after": 1}, retry_after=1)).headers == {
        "Retry-After": "1"}
    assert from_domain(errors.Conflict("conflict", "m")).headers == {}


def test_not_found_names_what_is_missing() -> None:
    error = from_domain(errors.NotFound("document", "d1"))
    assert error.body() == {"error": {"code": "not_found", "message": "no document 'd1'",
                                      "details": {"kind": "document", "id": "d1"}}}


def test_refusals_become_api_errors() -> None:
    with pytest.raises(ApiError) as raised, domain_refusals():
        raise errors.Locked("account_locked", "this account is locked", retry_after=5)
    assert raised.value.status == 423 and raised.value.headers == {"Retry-After": "5"}
