"""Domain errors: each carries a machine-readable code and the HTTP status it maps to.

Use cases raise these; the API renders them (``stockex.api.errors``) and the CLI prints their
message and exits non-zero. Keep codes stable: clients branch on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}
        self.headers = headers or {}


class InvalidInput(DomainError):
    status = 400
    code = "invalid_input"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


#: Why a correctly signed token is refused when its user does not exist (the database was
#: reset or the user removed while the token lived).
USER_GONE = "the token's user does not exist"


class Unauthorized(DomainError):
    """401: no valid token (missing, expired, tampered, revoked, or for a user that does not
    exist), or wrong credentials at login."""

    status = 401
    code = "invalid_token"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class UnknownMarket(NotFound):
    code = "unknown_market"

    def __init__(self, market: str) -> None:
        super().__init__(f"unknown market {market!r}", details={"market": market})


def refuse_unknown_fields(body: Mapping[str, Any], fields: Set[str]) -> None:
    """400 ``unknown_field`` (listing them) when ``body`` has keys outside ``fields``."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise InvalidInput(
            f"unknown field(s): {', '.join(unknown)}", code="unknown_field",
            details={"fields": unknown},
        )
