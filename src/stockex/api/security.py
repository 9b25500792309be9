"""HTTP hardening: the secret-key check, security headers and CORS.

* :func:`check_secret_key` refuses the placeholder ``secret_key`` (``change-me``), and any
  key shorter than 32 characters, unless the app is built for development (``stockex
  serve``) or tests: anyone could sign tokens with it.
* Every response gets ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer`` and a Content-Security-Policy: ``default-src 'none'`` for
  the API (JSON and CSV never need to load anything), and for Swagger UI under ``/api/docs``
  one that allows its own scripts and styles, its inline start-up script and Google Fonts.
  Responses to requests that carried credentials (an ``Authorization`` header, or a user set
  on ``flask.g.user_id``, or a password: login and register, whose answer may be a token,
  RFC 6749 §5.1) get ``Cache-Control: no-store``. HSTS is added on HTTPS requests.
* CORS is off unless ``api.cors_origins`` lists origins (or ``"*"``): then requests from those
  origins get ``Access-Control-Allow-Origin`` (and the headers a client needs to read), and
  their preflight ``OPTIONS`` requests are answered with 204 and the allowed methods/headers.
  Other origins get no CORS headers at all, so browsers keep them out.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request

from stockex.config import DEFAULT_SECRET_KEY, ConfigError, Settings

log = logging.getLogger("stockex.api")

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline' https://fonts.googleapis.com; "
    "font-src 'self' data: https://fonts.gstatic.com; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)
DOCS_PREFIX = "/api/docs"
#: Requests that carry a password (and answer with a token or a user): never cached.
CREDENTIAL_PATHS = frozenset({"/api/v1/auth/login", "/api/v1/auth/register"})

_ALWAYS = tuple(
    (name.lower(), name, value)
    for name, value in (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    )
)

CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_REQUEST_HEADERS = "Authorization, Content-Type, X-Request-ID"
CORS_EXPOSED_HEADERS = "X-Request-ID, Retry-After, Content-Disposition"
CORS_MAX_AGE = "600"


#: HS256 wants a key of at least its hash's 256 bits (RFC 7518 §3.2): 32 characters.
MIN_SECRET_KEY_LENGTH = 32


def check_secret_key(settings: Settings, *, development: bool = False) -> None:
    """Raise :class:`ConfigError` outside development and tests for the placeholder key or
    one shorter than :data:`MIN_SECRET_KEY_LENGTH` (a short HMAC key can be guessed offline
    from any token, and then anyone can sign tokens)."""
    key = settings.secret_key
    if key == DEFAULT_SECRET_KEY:
        problem = f"the placeholder {DEFAULT_SECRET_KEY!r}"
    elif len(key) < MIN_SECRET_KEY_LENGTH:
        problem = (f"{len(key)} characters, too short to sign tokens with (HS256 wants at "
                   f"least {MIN_SECRET_KEY_LENGTH})")
    else:
        return
    if development:
        log.warning("secret_key is %s: acceptable for development only", problem)
        return
    raise ConfigError(
        "secret_key",
        f"{problem} is refused outside development; set a long random string, e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(48))'` (STOCKEX__SECRET_KEY)",
    )


def install_security(app: Flask, settings: Settings) -> None:
    origins = frozenset(settings.api.cors_origins)
    any_origin = "*" in origins

    def allowed(origin: str | None) -> bool:
        return bool(origin) and (any_origin or origin in origins)

    if origins:

        @app.before_request
        def _preflight() -> Response | None:
            origin = request.headers.get("Origin")
            if (
                request.method != "OPTIONS"
                or "Access-Control-Request-Method" not in request.headers
                or not allowed(origin)
            ):
                return None
            response = app.response_class(status=204)
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_REQUEST_HEADERS
            response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
            return response

    @app.after_request
    def _headers(response: Response) -> Response:
        # Runs on every response: the names present are collected once (Headers.setdefault
        # would scan the list again for each header).
        headers = response.headers
        present = {name.lower() for name in headers.keys()}
        for lowered, name, value in _ALWAYS:
            if lowered not in present:
                headers.add(name, value)
        if "content-security-policy" not in present:
            path = request.path
            is_docs = path == DOCS_PREFIX or path.startswith(DOCS_PREFIX + "/")
            headers.add("Content-Security-Policy", DOCS_CSP if is_docs else API_CSP)
        if request.is_secure and "strict-transport-security" not in present:
            headers.add("Strict-Transport-Security", "max-age=31536000")
        if (request.path in CREDENTIAL_PATHS or "Authorization" in request.headers
                or g.get("user_id") is not None):
            headers["Cache-Control"] = "no-store"
            if "vary" in present:
                response.vary.add("Authorization")
            else:
                headers.add("Vary", "Authorization")
        origin = request.headers.get("Origin")
        if origins and allowed(origin):
            headers["Access-Control-Allow-Origin"] = "*" if any_origin else str(origin)
            headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
            if not any_origin:
                response.vary.add("Origin")
        return response
