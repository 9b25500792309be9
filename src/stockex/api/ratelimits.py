"""Rate limits (flask-limiter): the password routes per client IP, login also per client IP +
username, order placement per user.

Apply the decorators to the views (one line each)::

    from stockex.api.ratelimits import limit_login, limit_orders, limit_password

    @bp.post("/auth/register")
    @limit_password              # key: client IP, shared with login
    def register(): ...

    @bp.post("/auth/login")
    @limit_login                 # key: client IP + the "username" of the JSON body ...
    @limit_password              # ... then client IP alone (see below for the order)
    def login(): ...

    @bp.post("/orders")
    @require_user                # the auth decorator, which sets flask.g.user_id ...
    @limit_orders                # ... so this one goes below it (runs after it)
    def place_order(): ...

The limits come from ``api.login_rate_limit`` / ``api.password_rate_limit`` /
``api.order_rate_limit`` (flask-limiter rate strings such as ``"10 per minute"``; empty =
unlimited). They are counted with a moving window in Redis when ``redis.url`` is set, so every
process and machine shares them, and in the process otherwise. While Redis is unreachable they
are counted in the process (flask-limiter's in-memory fallback) and a request is never failed
because of the limiter. Over the limit the answer is 429 ``rate_limited`` in the usual error
shape, with ``Retry-After`` (seconds, at least 1) and ``details: {"limit", "retry_after"}``; a
request turned away this way does not reach the view.

**Password routes** (``api.password_rate_limit``, default 30 per minute per client IP, register
and login counted together): each of them computes one scrypt hash (login against a dummy hash
for an unknown user), about 120 ms of CPU and 32 MiB of memory (N=32768, r=8) on a 2-core
EPYC VM; a client alone made the API compute 8 a second per connection, a whole core each,
and the per-username login limit never stopped it, as each new name has a budget of its own.
Both routes share one budget because they cost the same hash: separate ones would let a
client burn twice as much by alternating. 30 hashes/min x 120 ms = 3.6 s of CPU a minute, 6 %
of one core per client address, while an office of a few hundred people behind one NAT
address, logging in about once an hour (``api.jwt_ttl_seconds``), averages a few a minute and
leaves room for a morning rush of 30 every minute. On login the per-username limit is checked
first: a request it turns away (a stuck script retrying one account) does not use up the
address's budget that its neighbours behind the same NAT share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded

from stockex.api.errors import error_response
from stockex.api.params import request_json
from stockex.config import Settings

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION = "stockex.rate_limits"
KEY_PREFIX = "stockex"
MAX_USERNAME_IN_KEY = 64


def client_ip() -> str:
    """The client's address: the socket's peer, or behind ``api.proxy_hops`` proxies the one
    they forwarded (``create_app`` wraps the app in ProxyFix). With no proxy configured a
    client-sent ``X-Forwarded-For`` changes nothing, so it cannot pick its own budget."""
    return request.remote_addr or "unknown"


def login_key() -> str:
    """``<ip>|<username>``; the username is trimmed and lower-cased so variants share a budget.

    Never raises: flask-limiter would take an exception here for a storage outage.
    """
    username = ""
    try:
        body = request_json()  # parsed once: the view reads it again
        if isinstance(body, dict) and isinstance(body.get("username"), str):
            username = body["username"].strip().lower()[:MAX_USERNAME_IN_KEY]
    except Exception:  # noqa: BLE001 - e.g. a body over the size limit; the view answers that
        username = ""
    return f"{client_ip()}|{username}"


def user_key() -> str:
    """``user:<id>`` once authenticated (``flask.g.user_id``), else ``ip:<address>``."""
    user_id = g.get("user_id")
    return f"user:{user_id}" if user_id is not None else f"ip:{client_ip()}"


def _login_gate() -> None:
    """Carries the login limit; flask-limiter checks it when called."""


def _password_gate() -> None:
    """Carries the password routes' limit (register and login, per client IP)."""


def _order_gate() -> None:
    """Carries the order placement limit."""


def install_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """A limiter for this app, with Redis storage when configured (see module doc)."""
    storage_options: dict[str, Any] = {}
    if settings.redis.url:
        storage_options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    limiter = Limiter(
        key_func=client_ip,
        app=app,
        storage_uri=settings.redis.url or "memory://",
        storage_options=storage_options,
        strategy="moving-window",
        key_prefix=KEY_PREFIX,
        headers_enabled=False,  # Retry-After is set by the 429 handler below
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    gates: dict[str, Callable[[], None]] = {}
    for name, limit, key_func, gate in (
        ("login", settings.api.login_rate_limit, login_key, _login_gate),
        ("password", settings.api.password_rate_limit, client_ip, _password_gate),
        ("order", settings.api.order_rate_limit, user_key, _order_gate),
    ):
        if limit:
            gates[name] = limiter.shared_limit(limit, scope=name, key_func=key_func)(gate)
    # Every limit here is a gate its view calls; there are no default, application or meta
    # limits, no rate-limit headers and no conditional deductions. flask-limiter's own hooks
    # would only look for those on every request (tens of microseconds, for nothing), so they
    # are taken off the request path; its per-request state lives on the request context and
    # goes with it.
    _remove_hooks(app, limiter)
    app.extensions[EXTENSION] = gates
    app.extensions["stockex.limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many_requests)
    return limiter


def _remove_hooks(app: Flask, limiter: Limiter) -> None:
    def installed_by_limiter(hook: Any) -> bool:
        bound_to = getattr(hook, "__self__", None)
        partial_of = getattr(hook, "args", (None,))[:1]
        return bound_to is limiter or partial_of == (limiter,)

    for hooks in (app.before_request_funcs, app.after_request_funcs,
                  app.teardown_request_funcs):
        functions = hooks.get(None, [])
        functions[:] = [f for f in functions if not installed_by_limiter(f)]


def _too_many_requests(exc: RateLimitExceeded) -> Response:
    limiter: Limiter = current_app.extensions["stockex.limiter"]
    retry_after = 1
    current = limiter.current_limit
    if current is not None:
        try:
            retry_after = max(1, math.ceil(current.window[0] - time.time()))
        except Exception:  # noqa: BLE001 - storage gone between the hit and here
            retry_after = 1
    limit = str(exc.limit.limit)
    response = error_response(
        429,
        "rate_limited",
        f"too many requests ({limit}); retry in {retry_after} s",
        {"limit": limit, "retry_after": retry_after},
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def _limited(name: str) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            gate = current_app.extensions.get(EXTENSION, {}).get(name)
            if gate is not None:
                gate()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


#: Limit a view by client IP + JSON ``username`` (``api.login_rate_limit``).
limit_login = _limited("login")
#: Limit a view by client IP, one budget for every view it decorates
#: (``api.password_rate_limit``): the routes that compute a password hash.
limit_password = _limited("password")
#: Limit a view per authenticated user, ``g.user_id`` (``api.order_rate_limit``).
limit_orders = _limited("order")
