"""The OpenAPI 3 document served at ``/api/openapi.json`` and shown by Swagger UI.

Written out here, in one place, rather than scraped from docstrings. A test checks that every
route the app serves is described and that the document validates against the OpenAPI 3
schema; when you add a route, add its path here.
"""

from __future__ import annotations

from typing import Any

from stockex import __version__
from stockex.config import Settings

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Any]:
    """References to the shared error responses, e.g. ``errors(400, 404)``."""
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$", "example": "0.001"}

_ERROR_TEXT = {
    400: "Invalid input (a specific `code` names the problem)",
    401: "Missing, invalid, expired or revoked token",
    403: "The token's role may not do this",
    404: "Unknown market, order or route",
    409: "Conflict with the current state",
    429: "Rate limited; see the Retry-After header",
    500: "Internal error (details are in the server log, never in the response)",
    503: "A backing service (database, Redis) is unavailable",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "example": "unknown_market"},
                    "message": {"type": "string"},
                    "details": {"type": "object", "additionalProperties": True},
                },
            }
        },
    },
    "Decimal": DECIMAL,
    "Market": {
        "type": "object",
        "required": [
            "id",
            "base",
            "quote",
            "price_precision",
            "amount_precision",
            "min_amount",
            "maker_fee",
            "taker_fee",
        ],
        "properties": {
            "id": {"type": "string", "example": "asaxu"},
            "base": {"type": "string", "example": "ASA"},
            "quote": {"type": "string", "example": "XU"},
            "price_precision": {"type": "integer", "minimum": 0},
            "amount_precision": {"type": "integer", "minimum": 0},
            "min_amount": ref("Decimal"),
            "maker_fee": ref("Decimal"),
            "taker_fee": ref("Decimal"),
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}


def _paths() -> dict[str, Any]:
    return {
        "/health": {
            "get": {
                "tags": ["service"],
                "summary": "Liveness: the process is up (no I/O)",
                "operationId": "health",
                "responses": {"200": json_response("Alive", ref("Health"))},
            }
        },
        "/ready": {
            "get": {
                "tags": ["service"],
                "summary": "Readiness: the database and Redis are reachable",
                "operationId": "ready",
                "responses": {"200": json_response("Ready", ref("Ready")), **errors(503)},
            }
        },
        "/api/v1/markets": {
            "get": {
                "tags": ["market data"],
                "summary": "Configured markets",
                "operationId": "listMarkets",
                "responses": {
                    "200": json_response(
                        "Every market", {"type": "array", "items": ref("Market")}
                    ),
                    **errors(503),
                },
            }
        },
    }


def build_spec(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "stockex API",
            "version": __version__,
            "description": (
                "Market data for the Tiki-Exchange markets crawled by stockex, and an internal "
                "order book. Times are Unix epoch seconds (UTC); `*_local` fields are in "
                f"{settings.timezone}. Amounts are decimal strings. Every error has the shape "
                "`{\"error\": {\"code\", \"message\", \"details\"}}`."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "service", "description": "Liveness and readiness"},
            {"name": "market data", "description": "Public market data"},
        ],
        "paths": with_operations_headers(_paths()),
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                f"E{status}": with_response_headers(json_response(text, ref("Error")), status)
                for status, text in _ERROR_TEXT.items()
            },
            "parameters": {"RequestId": REQUEST_ID_PARAMETER},
            "headers": RESPONSE_HEADERS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


# ----------------------------------------------------------------------------- operations

REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Your id for this request (A-Z a-z 0-9 . _ : -, up to 64 kept); "
    "else one is generated. Returned in the X-Request-ID response header.",
    "schema": {"type": "string"},
}
RESPONSE_HEADERS = {
    "RequestId": {
        "description": "The request id: the one sent, cleaned, or a generated one",
        "required": True,
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:\-]{1,64}$"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
}


def with_response_headers(response: dict[str, Any], status: int | str) -> dict[str, Any]:
    """``response`` with the headers every answer carries (and Retry-After on 429)."""
    if "$ref" in response:
        return response  # a shared response from components: it has them already
    headers = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
    if str(status) == "429":
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    return {**response, "headers": {**headers, **response.get("headers", {})}}


def with_operations_headers(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation accepts X-Request-ID and documents it on each response
    (see :mod:`stockex.api.request_log`)."""
    for item in paths.values():
        for operation in item.values():
            parameters = operation.setdefault("parameters", [])
            parameters.append({"$ref": "#/components/parameters/RequestId"})
            operation["responses"] = {
                status: with_response_headers(response, status)
                for status, response in operation["responses"].items()
            }
    return paths
