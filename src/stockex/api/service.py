"""Service endpoints: liveness (no I/O) and readiness (database and Redis reachable)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from stockex.api import services
from stockex.api.errors import error_response

bp = Blueprint("service", __name__)


@bp.get("/health")
def health() -> Response:
    """The process is alive. Touches nothing else, so it stays cheap under any outage."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """200 when the database and (if configured) Redis answer; 503 naming what does not."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if svc.cache.redis is not None:
        try:
            svc.cache.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    down = sorted(name for name, state in checks.items() if state != "ok")
    if down:
        return error_response(
            503, "not_ready", f"unavailable: {', '.join(down)}", {"checks": checks}
        )
    return jsonify({"status": "ready", "checks": checks})
