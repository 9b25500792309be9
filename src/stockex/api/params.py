"""Parsing request input into typed values, with a specific 400 code for every mistake."""

from __future__ import annotations

from typing import Any

from flask import request

from stockex.errors import InvalidInput


def json_body() -> dict[str, Any]:
    """The request's JSON object; 400 ``invalid_json`` for anything else."""
    data = request.get_json(silent=True, force=True)
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object", code="invalid_json")
    return data


def int_param(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; 400 ``invalid_<name>`` otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise InvalidInput(
            f"{name} must be an integer in {low}..{high}, got {raw!r}",
            code=f"invalid_{name}",
            details={name: raw, "min": low, "max": high},
        )
    return value
