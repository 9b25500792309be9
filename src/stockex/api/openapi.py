"""The OpenAPI 3 document served at ``/api/openapi.json`` and shown by Swagger UI.

Written out here, in one place, rather than scraped from docstrings. A test checks that every
route the app serves is described and that the document validates against the OpenAPI 3
schema; when you add a route, add its path here.
"""

from __future__ import annotations

from typing import Any

from stockex import __version__
from stockex.config import Settings
from stockex.models import MAX_ID

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
    413: "The request body is larger than 64 KiB",
    415: "The request body is compressed (`unsupported_content_encoding`): send it without "
         "Content-Encoding",
    429: "Rate limited; see the Retry-After header",
    500: "Internal error (details are in the server log, never in the response)",
    503: "A backing service (database, Redis) is unavailable, or the database schema is "
         "not migrated (`schema_not_migrated`: run `stockex db upgrade`)",
}

EPOCH = {"type": "integer", "format": "int64", "description": "Unix epoch seconds (UTC)",
         "example": 1719858240}
LOCAL_TIME = {"type": "string", "description": "ISO-8601 in the configured timezone",
              "example": "2024-07-02T01:24:00+07:00"}
CANDLE_PERIODS = [1, 5, 15, 30, 60, 120, 240, 360, 720, 1440, 4320, 10080]
CSV = "text/csv"

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
    "Candle": {
        "type": "object",
        "required": ["time", "time_local", "open", "high", "low", "close", "volume"],
        "properties": {
            "time": {**EPOCH, "description": "Bucket start, Unix epoch seconds (UTC)"},
            "time_local": LOCAL_TIME,
            "open": ref("Decimal"),
            "high": ref("Decimal"),
            "low": ref("Decimal"),
            "close": ref("Decimal"),
            "volume": ref("Decimal"),
        },
    },
    "Candles": {
        "type": "object",
        "required": ["market", "period", "timezone", "candles", "next_time_from"],
        "properties": {
            "market": {"type": "string", "example": "asaxu"},
            "period": {"type": "integer", "enum": CANDLE_PERIODS},
            "timezone": {"type": "string", "example": "Asia/Ho_Chi_Minh"},
            "candles": {"type": "array", "items": ref("Candle")},
            "next_time_from": {
                **EPOCH,
                "nullable": True,
                "description": "`time` of the next bucket with data within the requested "
                "range (pass it as `time_from` for the next page), else null",
            },
        },
    },
    "Ticker": {
        "type": "object",
        "required": ["market", "at", "at_local", "last", "last_time", "last_time_local",
                     "open", "high", "low", "volume", "price_change", "price_change_percent"],
        "properties": {
            "market": {"type": "string", "example": "asaxu"},
            "at": {**EPOCH, "description": "When the statistics were computed"},
            "at_local": LOCAL_TIME,
            "last": {**DECIMAL, "nullable": True,
                     "description": "Close of the newest crawled minute (null: no data)"},
            "last_time": {**EPOCH, "nullable": True},
            "last_time_local": {**LOCAL_TIME, "nullable": True},
            "open": {**DECIMAL, "nullable": True,
                     "description": "Open of the first minute of the last 24 h"},
            "high": {**DECIMAL, "nullable": True},
            "low": {**DECIMAL, "nullable": True},
            "volume": {**DECIMAL, "description": "Sum over the last 24 h"},
            "price_change": {**DECIMAL, "nullable": True, "description": "last - open"},
            "price_change_percent": {**DECIMAL, "nullable": True,
                                     "description": "(last - open) / open * 100, 2 decimals"},
        },
    },
    "PriceLevel": {
        "type": "array",
        "description": "[price, amount]",
        "items": ref("Decimal"),
        "minItems": 2,
        "maxItems": 2,
        "example": ["25000", "1.5"],
    },
    "Depth": {
        "type": "object",
        "required": ["market", "timestamp", "timestamp_local", "asks", "bids"],
        "properties": {
            "market": {"type": "string", "example": "asaxu"},
            "timestamp": EPOCH,
            "timestamp_local": LOCAL_TIME,
            "asks": {"type": "array", "items": ref("PriceLevel"),
                     "description": "Sell side, best (lowest) price first"},
            "bids": {"type": "array", "items": ref("PriceLevel"),
                     "description": "Buy side, best (highest) price first"},
        },
    },
    "PublicTrade": {
        "type": "object",
        "required": ["id", "price", "amount", "total", "taker_side", "created_at",
                     "created_at_local"],
        "properties": {
            "id": {"type": "integer", "format": "int64"},
            "price": ref("Decimal"),
            "amount": ref("Decimal"),
            "total": ref("Decimal"),
            "taker_side": {"type": "string", "enum": ["buy", "sell"]},
            "created_at": EPOCH,
            "created_at_local": LOCAL_TIME,
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


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


MARKET_PARAM = {
    "name": "market", "in": "path", "required": True, "description": "Market id",
    "schema": {"type": "string", "example": "asaxu"}, "example": "asaxu",
}


def _time_param(name: str, end: str) -> dict[str, Any]:
    return _query(
        name,
        f"{end} of the range, inclusive: Unix epoch seconds (`1719858240`) or ISO-8601 "
        "(`2024-07-02T01:24:00+07:00`; without an offset the configured timezone is used; "
        "`2024-07-02` is local midnight). 400 `invalid_" + name + "` when unparsable.",
        {"type": "string"},
    )


def _limit_param(default: int, maximum: int) -> dict[str, Any]:
    return _query(
        "limit", f"How many items (1..{maximum}); 400 `invalid_limit` otherwise",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    )


def _market_data_paths() -> dict[str, Any]:
    market_data = "market data"
    return {
        "/api/v1/markets/{market}/candles": {
            "get": {
                "tags": [market_data],
                "summary": "OHLCV candles of one period",
                "description": (
                    "Aggregated from the crawled one-minute candles: `time` is the bucket "
                    "start, open = first minute's open, close = last minute's close, high = "
                    "max, low = min, volume = sum. Only buckets holding data appear, "
                    "ascending by `time`. Buckets whose `time` lies in [`time_from`, "
                    "`time_to`] are returned; without `time_from`, the newest `limit` of "
                    "them up to `time_to` (default now).\n\n"
                    "Alignment: periods up to 1440 are aligned to local midnight "
                    "(`floor((t + offset) / (period*60)) * period*60 - offset`), 4320 on "
                    "local days counted from 1970-01-01, 10080 on Monday 00:00 local time.\n\n"
                    "`format=csv` answers a `text/csv` attachment with the header row "
                    "`time,time_local,open,high,low,close,volume` (page on with JSON's "
                    "`next_time_from`). Answers are cached: closed buckets for long, "
                    "anything touching the open bucket for at most one crawl interval."
                ),
                "operationId": "getCandles",
                "parameters": [
                    MARKET_PARAM,
                    _query("period", "Bucket length in minutes; 400 `invalid_period` "
                           "otherwise", {"type": "integer", "enum": CANDLE_PERIODS,
                                         "default": 1}),
                    _time_param("time_from", "Start"),
                    _time_param("time_to", "End (default: now)"),
                    _limit_param(500, 5000),
                    _query("format", "`json` (default) or `csv`; 400 `invalid_format` "
                           "otherwise", {"type": "string", "enum": ["json", "csv"],
                                         "default": "json"}),
                ],
                "responses": {
                    "200": {
                        "description": "Candles (400 `invalid_time_range` when time_from > "
                                       "time_to)",
                        "headers": {
                            "Content-Disposition": {
                                "description": "With format=csv: `attachment; "
                                               "filename=\"...csv\"`",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {
                            JSON: {"schema": ref("Candles")},
                            CSV: {
                                "schema": {"type": "string"},
                                "example": "time,time_local,open,high,low,close,volume\r\n"
                                "1719853200,2024-07-02T00:00:00+07:00,25000,25100,24900,"
                                "25050,12.5\r\n",
                            },
                        },
                    },
                    **errors(400, 404),
                    "503": json_response(
                        "A backing service (database, Redis) is unavailable, or the database "
                        "schema is not migrated (`schema_not_migrated`: run `stockex db "
                        "upgrade`); or, for a period above 1, `candles_rebuild_required`: the "
                        "rollups were bucketed in another timezone than the configured one "
                        "(run `stockex candles rebuild`)", ref("Error")),
                },
            }
        },
        "/api/v1/markets/{market}/ticker": {
            "get": {
                "tags": [market_data],
                "summary": "Last price and 24 h statistics from the crawled minutes",
                "operationId": "getTicker",
                "parameters": [MARKET_PARAM],
                "responses": {"200": json_response("Ticker", ref("Ticker")),
                              **errors(404, 503)},
            }
        },
        "/api/v1/markets/{market}/depth": {
            "get": {
                "tags": [market_data],
                "summary": "Order book depth of the internal book",
                "description": "Open limit orders summed per price (remaining = amount - "
                               "filled); asks ascending, bids descending, `limit` levels a "
                               "side.",
                "operationId": "getDepth",
                "parameters": [MARKET_PARAM, _limit_param(50, 1000)],
                "responses": {"200": json_response("Depth", ref("Depth")),
                              **errors(400, 404, 503)},
            }
        },
        "/api/v1/markets/{market}/trades": {
            "get": {
                "tags": [market_data],
                "summary": "Recent internal trades, newest first",
                "description": "Newest first: by `created_at`, then by `id`. Optionally within "
                               "[`time_from`, `time_to`] on `created_at` (400 "
                               "`invalid_time_range` when reversed) and after `before_id`.",
                "operationId": "getTrades",
                "parameters": [
                    MARKET_PARAM,
                    _limit_param(50, 1000),
                    _time_param("time_from", "Start"),
                    _time_param("time_to", "End"),
                    _query(
                        "before_id",
                        "Paging: the `id` of the last trade of the previous page; only the "
                        "trades listed after it (the older ones: while the API machines' "
                        "clocks agree, those with lower ids), so every trade comes once "
                        "however many share a second. Combines with `time_from`/`time_to`. "
                        "400 `invalid_before_id` outside 1..9223372036854775807.",
                        {"type": "integer", "minimum": 1, "maximum": MAX_ID},
                    ),
                ],
                "responses": {
                    "200": json_response("Trades",
                                         {"type": "array", "items": ref("PublicTrade")}),
                    **errors(400, 404, 503),
                },
            }
        },
    }


ORDER_ERROR_CODES = (
    "invalid_json, unknown_field, invalid_market, invalid_side, invalid_type, "
    "invalid_time_in_force, invalid_price, invalid_amount, invalid_quote_amount, "
    "too_many_decimals, below_min_amount, invalid_client_order_id, insufficient_balance"
)

# Request bodies carry a whole example: Swagger UI's "Try it out" starts from it, and without
# one makes one up from the properties (a password "string", too short; an order with every
# optional field), which the API refuses. Register, log in, deposit (as admin) and order with
# them, in that order, and each is accepted.
EXAMPLE_PASSWORD = "correct-horse-battery"  # noqa: S105 - an example in the docs

TRADING_SCHEMAS: dict[str, Any] = {
    "RegisterRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["username", "password"],
        "properties": {
            "username": {"type": "string", "pattern": "^[a-z0-9_.-]{3,32}$", "example": "alice"},
            "password": {"type": "string", "minLength": 8, "format": "password"},
            "email": {"type": "string", "format": "email", "nullable": True},
        },
        "example": {"username": "alice", "password": EXAMPLE_PASSWORD,
                    "email": "alice@example.com"},
    },
    "LoginRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["username", "password"],
        "properties": {
            "username": {"type": "string"},
            "password": {"type": "string", "format": "password"},
        },
        "example": {"username": "alice", "password": EXAMPLE_PASSWORD},
    },
    "User": {
        "type": "object",
        "required": ["id", "username", "role"],
        "properties": {
            "id": {"type": "integer"},
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "admin"]},
            "email": {"type": "string", "nullable": True},
        },
    },
    "Token": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string", "description": "JWT (HS256)"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "description": "seconds"},
        },
    },
    "Balance": {
        "type": "object",
        "required": ["asset", "available", "locked"],
        "properties": {
            "asset": {"type": "string", "example": "XU"},
            "available": ref("Decimal"),
            "locked": ref("Decimal"),
        },
    },
    "TransferRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["username", "asset", "amount"],
        "properties": {
            "username": {"type": "string"},
            "asset": {"type": "string", "example": "XU"},
            "amount": ref("Decimal"),
        },
        "example": {"username": "alice", "asset": "XU", "amount": "100000"},
    },
    "TransferResult": {
        "type": "object",
        "required": ["username", "asset", "available", "locked"],
        "properties": {
            "username": {"type": "string"},
            "asset": {"type": "string"},
            "available": ref("Decimal"),
            "locked": ref("Decimal"),
        },
    },
    "OrderRequest": {
        "type": "object",
        "required": ["market", "side", "type", "time_in_force"],
        "additionalProperties": False,
        "description": (
            "Limit orders need `price` and `amount`; market orders take no price; a market "
            "buy gives `amount` (base) or `quote_amount` (quote to spend), never both. "
            "`time_in_force` is required, market orders included: GTC rests the unfilled "
            "rest, IOC cancels it, FOK fills entirely or not at all; market orders never "
            "rest, so GTC is refused for them."
        ),
        "properties": {
            "market": {"type": "string", "example": "asaxu"},
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "type": {"type": "string", "enum": ["limit", "market"]},
            "price": ref("Decimal"),
            "amount": ref("Decimal"),
            "quote_amount": ref("Decimal"),
            "time_in_force": {"type": "string", "enum": ["GTC", "IOC", "FOK"]},
            "client_order_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
        },
        "example": {"market": "asaxu", "side": "buy", "type": "limit", "price": "25000",
                    "amount": "0.5", "time_in_force": "GTC"},
    },
    "Fill": {
        "type": "object",
        "required": ["id", "order_id", "market", "side", "role", "price", "amount", "total",
                     "fee", "fee_asset", "created_at", "created_at_local"],
        "properties": {
            "id": {"type": "integer", "description": "trade id"},
            "order_id": {"type": "integer"},
            "market": {"type": "string"},
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "role": {"type": "string", "enum": ["maker", "taker"]},
            "price": ref("Decimal"),
            "amount": ref("Decimal"),
            "total": ref("Decimal"),
            "fee": ref("Decimal"),
            "fee_asset": {"type": "string"},
            "created_at": {"type": "integer"},
            "created_at_local": {"type": "string", "format": "date-time"},
        },
    },
    "Order": {
        "type": "object",
        "required": ["id", "client_order_id", "market", "side", "type", "time_in_force",
                     "price", "amount", "quote_amount", "filled_amount", "filled_quote",
                     "avg_price", "fee", "fee_asset", "status", "created_at", "updated_at",
                     "fills"],
        "properties": {
            "id": {"type": "integer"},
            "client_order_id": {"type": "string", "nullable": True},
            "market": {"type": "string"},
            "side": {"type": "string", "enum": ["buy", "sell"]},
            "type": {"type": "string", "enum": ["limit", "market"]},
            "time_in_force": {"type": "string", "enum": ["GTC", "IOC", "FOK"]},
            "price": {**DECIMAL, "nullable": True},
            "amount": {**DECIMAL, "nullable": True},
            "quote_amount": {**DECIMAL, "nullable": True},
            "filled_amount": ref("Decimal"),
            "filled_quote": ref("Decimal"),
            "avg_price": {**DECIMAL, "nullable": True},
            "fee": ref("Decimal"),
            "fee_asset": {"type": "string"},
            "status": {"type": "string", "enum": ["open", "filled", "cancelled"]},
            "created_at": {"type": "integer"},
            "created_at_local": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "integer"},
            "updated_at_local": {"type": "string", "format": "date-time"},
            "fills": {"type": "array", "items": ref("Fill")},
        },
    },
}
SCHEMAS.update(TRADING_SCHEMAS)


def _paths() -> dict[str, Any]:
    return {
        **_market_data_paths(),
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


def json_body_of(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": ref(schema)}}}


SECURED = [{"bearerAuth": []}]


def _trading_query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _trading_paths() -> dict[str, Any]:
    limit = _trading_query(
        "limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
        "how many (400 invalid_limit outside 1..500)",
    )
    before = _trading_query("before_id", {"type": "integer", "minimum": 1},
                    "only ids below this one (paging)")
    market = _trading_query("market", {"type": "string"}, "one market (404 unknown_market)")
    order_id = {"name": "order_id", "in": "path", "required": True,
                "schema": {"type": "integer"}}
    orders = {"type": "array", "items": ref("Order")}
    return {
        "/api/v1/auth/register": {"post": {
            "tags": ["accounts"], "summary": "Register a user", "operationId": "register",
            "description": "400 codes: invalid_json, unknown_field, invalid_username, "
                           "invalid_password, invalid_email. 409 username_taken.",
            "requestBody": json_body_of("RegisterRequest"),
            "responses": {"201": json_response("Created", ref("User")),
                          **errors(400, 409, 413, 415, 429, 503)},
        }},
        "/api/v1/auth/login": {"post": {
            "tags": ["accounts"], "summary": "Log in: a bearer token",
            "operationId": "login",
            "description": "400 invalid_json, unknown_field; 401 invalid_credentials.",
            "requestBody": json_body_of("LoginRequest"),
            "responses": {"200": json_response("A token", ref("Token")),
                          **errors(400, 401, 413, 415, 429, 503)},
        }},
        "/api/v1/auth/logout": {"post": {
            "tags": ["accounts"], "summary": "Revoke the presented token",
            "operationId": "logout", "security": SECURED,
            "responses": {"204": {"description": "Revoked"}, **errors(401, 503)},
        }},
        "/api/v1/me": {"get": {
            "tags": ["accounts"], "summary": "The caller", "operationId": "me",
            "security": SECURED,
            "responses": {"200": json_response("The user", ref("User")),
                          **errors(401, 503)},
        }},
        "/api/v1/balances": {"get": {
            "tags": ["accounts"], "summary": "The caller's balances, every asset",
            "operationId": "balances", "security": SECURED,
            "responses": {"200": json_response("Balances", {"type": "array",
                                                            "items": ref("Balance")}),
                          **errors(401, 503)},
        }},
        "/api/v1/orders": {
            "post": {
                "tags": ["trading"], "summary": "Place an order (matched at once)",
                "operationId": "placeOrder", "security": SECURED,
                "description": f"400 codes: {ORDER_ERROR_CODES}. 404 unknown_market. "
                               "409 fok_not_filled, insufficient_liquidity, "
                               "duplicate_client_order_id (same client_order_id, "
                               "different request). A rejection changes nothing.",
                "requestBody": json_body_of("OrderRequest"),
                "responses": {
                    "201": json_response("Placed, with its fills", ref("Order")),
                    "200": json_response("The original order of a repeated client_order_id",
                                         ref("Order")),
                    **errors(400, 401, 404, 409, 413, 415, 429, 503),
                },
            },
            "get": {
                "tags": ["trading"], "summary": "The caller's orders, newest first",
                "operationId": "listOrders", "security": SECURED,
                "parameters": [
                    market,
                    _trading_query("status", {"type": "string", "enum": ["open", "filled",
                                                                 "cancelled"]},
                           "only this status (400 invalid_status)"),
                    limit, before,
                ],
                "responses": {"200": json_response("Orders", orders),
                              **errors(400, 401, 404, 503)},
            },
        },
        "/api/v1/orders/{order_id}": {
            "get": {
                "tags": ["trading"], "summary": "One of the caller's orders",
                "operationId": "getOrder", "security": SECURED, "parameters": [order_id],
                "responses": {"200": json_response("The order", ref("Order")),
                              **errors(401, 404, 503)},
            },
            "delete": {
                "tags": ["trading"], "summary": "Cancel an open order",
                "operationId": "cancelOrder", "security": SECURED, "parameters": [order_id],
                "description": "Releases what the order still reserves. 404 order_not_found; "
                               "409 order_not_open.",
                "responses": {"200": json_response("The cancelled order", ref("Order")),
                              **errors(401, 404, 409, 503)},
            },
        },
        "/api/v1/account/trades": {"get": {
            "tags": ["trading"], "summary": "The caller's fills, newest first",
            "operationId": "accountTrades", "security": SECURED,
            "parameters": [market, limit, before],
            "responses": {"200": json_response("Fills", {"type": "array",
                                                         "items": ref("Fill")}),
                          **errors(400, 401, 404, 503)},
        }},
        "/api/v1/admin/deposits": {"post": {
            "tags": ["admin"], "summary": "Credit a user's balance (admin)",
            "operationId": "deposit", "security": SECURED,
            "description": "400 invalid_json, unknown_field, invalid_amount, unknown_asset; "
                           "404 unknown_user.",
            "requestBody": json_body_of("TransferRequest"),
            "responses": {"200": json_response("The new balance", ref("TransferResult")),
                          **errors(400, 401, 403, 404, 413, 415, 503)},
        }},
        "/api/v1/admin/withdrawals": {"post": {
            "tags": ["admin"], "summary": "Debit a user's available balance (admin)",
            "operationId": "withdraw", "security": SECURED,
            "description": "400 invalid_json, unknown_field, invalid_amount, unknown_asset, "
                           "insufficient_balance; 404 unknown_user.",
            "requestBody": json_body_of("TransferRequest"),
            "responses": {"200": json_response("The new balance", ref("TransferResult")),
                          **errors(400, 401, 403, 404, 413, 415, 503)},
        }},
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
            {"name": "accounts", "description": "Users, tokens and balances"},
            {"name": "trading", "description": "Orders and fills (bearer token)"},
            {"name": "admin", "description": "Deposits and withdrawals (admin role)"},
        ],
        "paths": with_operations_headers({**_paths(), **_trading_paths()}),
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
