"""The one error the edge raises on purpose: it becomes `{"error": {code, message, details}}`
with its HTTP status, and the CLI prints its message. A domain refusal becomes one through
`from_domain`, its kind deciding the status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from domain.errors import (
    Conflict,
    DomainError,
    Expired,
    Invalid,
    Locked,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unsupported,
)

STATUS: dict[type[DomainError], int] = {
    Invalid: 422, NotFound: 404, Unauthorized: 401, Conflict: 409, Expired: 410, Locked: 423, TooLarge: 413,
    Unsupported: 415, Unavailable: 503,
}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vagent"'}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def from_domain(error: DomainError) -> ApiError:
    status = next((STATUS[kind] for kind in type(error).__mro__ if kind in STATUS), 500)
    headers = dict(CHALLENGE) if isinstance(error, Unauthorized) else {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return ApiError(status, error.code, error.message, error.details, headers)


@contextlib.contextmanager
def domain_refusals() -> Iterator[None]:
    """Domain refusals raised inside become ApiErrors, for code that answers only those."""
    try:
        yield
    except DomainError as error:
        raise from_domain(error) from error


def not_found(kind: str, ident: str) -> ApiError:
    return from_domain(NotFound(kind, ident))


def unauthorized(code: str, message: str) -> ApiError:
    return from_domain(Unauthorized(code, message))
