"""Public market data: ``/api/v1/markets`` (and, with the market data issue, candles etc.)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from stockex.api import services
from stockex.markets import market_json

bp = Blueprint("market_data", __name__)


@bp.get("/markets")
def list_markets() -> Response:
    """Every configured market with its precisions, minimum amount and fees."""
    return jsonify([market_json(m) for m in services().settings.markets])
