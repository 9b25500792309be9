"""What the API reports to Slack (through :mod:`stockex.alerts`), and when it says "resolved".

* An unhandled exception in a view (the 500 handler): source ``api <METHOD> <route rule>``,
  e.g. ``api POST /api/v1/orders``; resolved by a human.
* The database unreachable, or its SQLite file unusable (a 503 from any route, or
  ``/ready``): source ``database``; resolved when ``/ready`` finds it answering again. For
  SQLite the alert says what is wrong with the file (``problem``).
* Redis unreachable (the cache falling back to no cache, or ``/ready``): source ``redis``;
  resolved when the cache or ``/ready`` reaches it again.

The fingerprint is ``<source>#<error type>``; every alert carries the request's method, path,
request id and user id (``g.user_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, has_request_context, request

from stockex.alerts import SERVICE_API, AlertNotifier
from stockex.api.request_log import loggable_path

EXTENSION = "stockex.alerts"
DATABASE = "database"
REDIS = "redis"


def request_context() -> dict[str, Any]:
    if not has_request_context():
        return {}
    return {
        "method": request.method,
        "path": loggable_path(),  # a client's %0A must not forge a line of the alert
        "request_id": g.get("request_id"),
        "user_id": g.get("user_id"),
        "endpoint": request.endpoint,
    }


def api_source() -> str:
    if not has_request_context():
        return "api"
    rule = request.url_rule.rule if request.url_rule is not None else loggable_path()
    return f"api {request.method} {rule}"


def install_incident_alerts(app: Flask, notifier: AlertNotifier) -> None:
    """Hook the notifier into the error handlers of :mod:`stockex.api.errors`."""
    app.extensions[EXTENSION] = notifier

    def on_unhandled_error(exc: BaseException) -> None:
        notifier.alert_exception(api_source(), exc, request_context(), service=SERVICE_API)

    def on_database_unavailable(exc: BaseException) -> None:
        context = {**request_context(), **_database_problem(exc)}
        notifier.alert_exception(DATABASE, exc, context, service=SERVICE_API)

    app.extensions["stockex.on_unhandled_error"] = on_unhandled_error
    app.extensions["stockex.on_database_unavailable"] = on_database_unavailable


def _database_problem(exc: BaseException) -> dict[str, str]:
    """``{"problem": ...}`` when ``exc`` says what is wrong with the SQLite file, else {}."""
    from stockex.api import services

    problem = services().db.unavailable(exc)
    return {"problem": problem} if problem else {}


def cache_hooks(
    notifier: AlertNotifier,
) -> dict[str, Callable[..., None]]:
    """``on_down``/``on_up`` for :class:`stockex.cache.Cache`: the Redis fallback engaging."""

    def on_down(exc: Exception) -> None:
        notifier.alert_exception(REDIS, exc, request_context(), service=SERVICE_API)

    def on_up() -> None:
        notifier.resolve(REDIS, service=SERVICE_API)

    return {"on_down": on_down, "on_up": on_up}


def report_dependency(name: str, error: BaseException | None) -> None:
    """For ``/ready``: alert while ``name`` fails, resolve once it answers (never blocks)."""
    notifier: AlertNotifier | None = current_app.extensions.get(EXTENSION)
    if notifier is None:
        return
    if error is None:
        notifier.resolve(name, service=SERVICE_API, context={"checked_by": "/ready"})
    else:
        context = {**request_context(), "checked_by": "/ready"}
        if name == DATABASE:
            context.update(_database_problem(error))
        notifier.alert_exception(name, error, context, service=SERVICE_API)
