"""What a decision refuses, and why: a stable `code` clients and scripts match on, a
message for people, and JSON-able `details`. The kind (the class) says what sort of
refusal it is; `edge/api` turns the kind into an HTTP status and `cli` into an exit code,
so the domain never names either."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None, *,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after  # seconds after which trying again may succeed


class Invalid(DomainError):
    """The input breaks a rule (a malformed email, a weak password, an unknown provider)."""


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str) -> None:
        # The same answer whether it does not exist or belongs to someone else: no probing.
        super().__init__("not_found", f"no {kind} {ident!r}", {"kind": kind, "id": ident})


class Unauthorized(DomainError):
    """No valid credentials: a wrong password, a token expired, revoked or for another use."""


class Conflict(DomainError):
    """The current state forbids it (taken, in use) or changed meanwhile (retry)."""


class Expired(DomainError):
    """It existed but its time is over (an activation code)."""


class Locked(DomainError):
    """The account is locked."""


class TooLarge(DomainError):
    """Bigger than a limit allows (a file, a document's passages, a quota)."""


class Unsupported(DomainError):
    """A kind of input the system does not handle (a file type)."""


class Unavailable(DomainError):
    """Refused for now (busy, a mail server down): the same request may succeed later."""
