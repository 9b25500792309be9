"""Request ids and the access log.

Every request gets an id: the client's ``X-Request-ID`` when it sends one (kept to the
characters ``A-Z a-z 0-9 . _ : -`` and at most 64 of them, so it is safe in logs and headers),
else a new random one. The id is

* sent back in the ``X-Request-ID`` header of every response, errors included;
* on every log line written while the request is served (``%(request_id)s``, see
  :mod:`stockex.logs`) and in alerts about it;
* in the one access-log line per request (logger ``stockex.access``, INFO)::

      GET /api/v1/markets 200 3.1ms request_id=4f0c... user_id=7 ip=10.0.0.5

``user_id`` is ``flask.g.user_id`` when the authentication layer has set it, else ``-``;
``ip`` the client's address, which behind reverse proxies is the one they forwarded
(``api.proxy_hops``, see :func:`stockex.api.trust_proxies`), else the socket's peer.
The path is the client's, percent-decoded: :func:`loggable_path` writes its control
characters as escapes (``%0A`` shows as ``\\x0a``), so that a request cannot end the line and
forge another one (as nginx escapes them in its access log).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from stockex.logs import NO_REQUEST, request_id_var

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 64
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._:\-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

access_log = logging.getLogger("stockex.access")


def clean_request_id(raw: str | None) -> str | None:
    """The usable part of a client-sent id, or None when nothing usable is left."""
    if not raw:
        return None
    cleaned = _NOT_ALLOWED.sub("", raw)[:MAX_REQUEST_ID_LENGTH]
    return cleaned or None


def loggable_path() -> str:
    """The request's path for a log line: control characters (CR, LF, ESC, ...) escaped."""
    path = request.path
    if _CONTROL.search(path) is None:
        return path
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", path)


def new_request_id() -> str:
    return uuid.uuid4().hex


def install_request_log(app: Flask) -> None:
    """Register the hooks; call before any other ``before_request`` hook is registered."""

    @app.before_request
    def _start() -> None:
        request_id = clean_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        g.request_id = request_id
        g.request_started = time.perf_counter()
        request_id_var.set(request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("request_started")
        elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        user_id = g.get("user_id")
        access_log.info(
            "%s %s %d %.1fms request_id=%s user_id=%s ip=%s",
            request.method,
            loggable_path(),
            response.status_code,
            elapsed_ms,
            request_id or NO_REQUEST,
            user_id if user_id is not None else "-",
            request.remote_addr or "-",
        )
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        # Threads are reused between requests: do not let this id leak into the next one.
        request_id_var.set(NO_REQUEST)
