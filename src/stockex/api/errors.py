"""One JSON error path for the whole API (CONTRACT §5).

Domain code raises :class:`ApiError` (or a subclass of :class:`stockex.errors.DomainError`);
one set of handlers renders every failure as
``{"error": {"code": ..., "message": ..., "details": {...}}}``. Werkzeug's HTTP errors
(404, 405, 413, ...) get the same shape, a lost database (or a SQLite database file that
cannot be used: see :func:`stockex.db.sqlite_unavailable`) answers 503, and anything unexpected
answers a 500 that hides the traceback (which goes to the log instead).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from stockex.api.request_log import loggable_path
from stockex.db import RUN_UPGRADE, CommitOutcomeUnknown, driver_error_is, is_missing_table
from stockex.errors import DomainError

log = logging.getLogger("stockex.api")


class ApiError(DomainError):
    """An error with an HTTP status; raise it from request handling code."""


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, DisconnectionError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated or _is_connect_error(exc)


def _sqlite_unavailable(exc: BaseException) -> str | None:
    """What is wrong with the SQLite database file (see :func:`stockex.db.sqlite_unavailable`),
    or None."""
    from stockex.api import services

    return services().db.unavailable(exc)


def _is_connect_error(exc: BaseException) -> bool:
    # 2003 can't connect, 2006 server gone away, 2013 lost connection during query
    return driver_error_is(exc, (2003, 2006, 2013))


def _schema_behind() -> bool:
    """Whether a missing table is a missing migration (else: a bug or a dropped table, a
    500 with its traceback and alert like any other)."""
    from stockex.api import services
    from stockex.migrate import schema_behind

    try:
        return schema_behind(services().db)
    except Exception:  # noqa: BLE001 - cannot tell: report the original error as it is
        return False


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.details)
        for name, value in exc.headers.items():
            response.headers[name] = value
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif status == 413:  # Werkzeug's text ("exceeds the capacity limit") names no limit
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            if limit:
                message = f"the request body is larger than {limit // 1024} KiB ({limit} bytes)"
        response = error_response(status, code, message)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        problem = _sqlite_unavailable(exc)  # the SQLite file unusable: as an outage
        if problem is not None or _database_unavailable(exc):
            log.warning("database unavailable during %s %s: %s", request.method,
                        loggable_path(), problem or exc)
            on_down = app.extensions.get("stockex.on_database_unavailable")
            if on_down is not None:
                on_down(exc)
            if isinstance(exc, CommitOutcomeUnknown):  # not "nothing happened": it may have
                hint = ""
                if request.method == "POST" and request.path == "/api/v1/orders":
                    hint = (" (GET /api/v1/orders; an order sent again with the same "
                            "client_order_id is placed at most once)")
                return error_response(503, "database_unavailable", exc.outcome + hint,
                                      {"outcome": "unknown"})
            return error_response(503, "database_unavailable",
                                  problem or "the database is not reachable")
        if is_missing_table(exc) and _schema_behind():  # the operator's to fix: say how
            log.error("%s %s: %s (%s)", request.method, loggable_path(), RUN_UPGRADE,
                      str(getattr(exc, "orig", exc)).splitlines()[0])
            return error_response(503, "schema_not_migrated", RUN_UPGRADE)
        log.exception("unhandled error in %s %s", request.method, loggable_path())
        hook = app.extensions.get("stockex.on_unhandled_error")
        if hook is not None:
            hook(exc)
        return error_response(500, "internal_error", "internal server error")
