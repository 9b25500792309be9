"""Service endpoints: liveness (no I/O) and readiness (database and Redis reachable)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from stockex.api import services
from stockex.api.errors import error_response
from stockex.api.incidents import DATABASE, REDIS, report_dependency
from stockex.db import RUN_UPGRADE
from stockex.migrate import schema_behind

bp = Blueprint("service", __name__)


@bp.get("/health")
def health() -> Response:
    """The process is alive. Touches nothing else, so it stays cheap under any outage."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """200 when the database (migrated to this code's schema) and, if configured, Redis
    answer; 503 naming what does not.

    A check turning bad raises an alert, and turning good again resolves it.
    """
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.db.ping()
        if schema_behind(svc.db):  # every route would fail on a missing table or column
            checks[DATABASE] = RUN_UPGRADE
            report_dependency(DATABASE, RuntimeError(RUN_UPGRADE))
        else:
            checks[DATABASE] = "ok"
            report_dependency(DATABASE, None)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        checks[DATABASE] = f"unavailable: {svc.db.unavailable(exc) or type(exc).__name__}"
        report_dependency(DATABASE, exc)
    if svc.cache.redis is not None:
        try:
            svc.cache.ping()
            checks[REDIS] = "ok"
            if not svc.cache.refusing_writes:  # full: reachable, but the cache's alert stands
                report_dependency(REDIS, None)
        except Exception as exc:  # noqa: BLE001
            checks[REDIS] = f"unavailable: {type(exc).__name__}"
            report_dependency(REDIS, exc)
    down = sorted(name for name, state in checks.items() if state != "ok")
    if down:
        return error_response(
            503, "not_ready", f"unavailable: {', '.join(down)}", {"checks": checks}
        )
    return jsonify({"status": "ready", "checks": checks})
