"""The one error the edge raises on purpose: it becomes `{"error": {code, message, details}}`
with its HTTP status, and the CLI prints its message."""

from __future__ import annotations

from typing import Any


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


def not_found(kind: str, ident: str) -> ApiError:
    # The same answer whether it does not exist or belongs to someone else: no probing.
    return ApiError(404, "not_found", f"no {kind} {ident!r}", {"kind": kind, "id": ident})


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Bearer realm="vagent"'})
