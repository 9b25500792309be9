"""Parsing request input into typed values, with a specific 400 code for every mistake."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter

from stockex.errors import DomainError, InvalidInput, refuse_unknown_fields
from stockex.models import MAX_ID
from stockex.numbers import parse_int

log = logging.getLogger("stockex.api")


class AsciiIntegerConverter(IntegerConverter):
    """``<int:...>`` in a route: ASCII digits only, as :func:`stockex.numbers.parse_int` reads
    query integers. Werkzeug's own matches ``\\d``, any script's digits (``/orders/١``)."""

    regex = r"[0-9]+"


class _NotJson(ValueError):
    """What Python's parser takes and JSON does not; the message is for the client."""


_LONE_SURROGATE = ("a string escapes a lone surrogate (\\ud800-\\udfff), which no UTF-8 "
                   "text can hold")


def _refuse_constant(name: str) -> None:
    raise _NotJson(f"{name} is not a JSON value (send numbers as strings)")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object that names a key twice is refused (Binance: -1101 "Duplicate values for a
    parameter"): Python's parser keeps the last value, so {"amount": "1", "amount": "2"}
    would place an order for 2 while a proxy or log reading the first saw 1. About 0.5 us
    per order body on the placement path."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:  # named in the answer, unless it is no UTF-8 text ("\ud800")
                raise _DuplicateKey(key) if _SURROGATE.search(key) is None else _NotJson(
                    _LONE_SURROGATE)
            seen.add(key)
    return obj


# Strict JSON: Python's parser would take NaN and Infinity, which could then be echoed back in
# an error's details as invalid JSON; and a repeated key (see _unique_keys).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
# Python's parser also takes an escaped lone surrogate ("\ud800"), which no UTF-8 text can
# hold (RFC 8259 §8.2): the string then fails wherever it is encoded (a password hash, a SQL
# parameter) with a 500. Bodies that contain such an escape are checked once more.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_encodable(value: Any) -> None:
    """:class:`_NotJson` when a string in ``value`` has a lone surrogate."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _NotJson(_LONE_SURROGATE) from None


def request_json() -> Any:
    """The body as strict UTF-8 JSON, parsed once per request; None when it is not JSON
    (or is too deeply nested to parse, escapes a lone surrogate, or repeats a key: then
    ``g.stockex_json_duplicate`` names it; ``g.stockex_json_problem`` says what else is
    wrong, when it can). A body over the size limit raises 413."""
    if "stockex_json" not in g:
        value = None
        try:  # a 413 propagates, and leaves nothing cached: a second call raises it again
            data = request.get_data(cache=True)
            # Content-Length first: the limit costs a look into the app's config (2 us)
            if request.content_length is None and (
                (limit := request.max_content_length) is not None and len(data) >= limit
            ):
                # A streamed (chunked) body is read up to the limit only, and Werkzeug
                # raises 413 on a further read alone: look for one more byte ourselves.
                if g.get("stockex_json_too_large") or request.input_stream.read(1):
                    g.stockex_json_too_large = True  # for a second call (login's rate limit)
                    raise RequestEntityTooLarge()
            text = data.decode("utf-8")
            value = _DECODER.decode(text)
            if _SURROGATE_ESCAPE.search(text):
                _check_encodable(value)
        except _DuplicateKey as exc:
            value, g.stockex_json_duplicate = None, str(exc)
        except UnicodeDecodeError:
            g.stockex_json_problem = ("the request body is not UTF-8 text", {})
        except json.JSONDecodeError as exc:
            g.stockex_json_problem = _syntax_problem(exc)
        except _NotJson as exc:  # NaN, Infinity, a lone surrogate
            value = None  # a lone surrogate is found after the parse
            g.stockex_json_problem = (f"the request body is not valid JSON: {exc}", {})
        except RecursionError:  # 30,000 brackets
            g.stockex_json_problem = ("the request body is nested too deeply", {})
        except ValueError:
            value = None
        except HTTPException:  # 413: over the size limit
            raise
        except Exception as exc:  # noqa: BLE001 - the server could not read the body: gunicorn
            # raises InvalidChunkSize for a malformed chunked body, NoMoreData when cut short
            log.info("request body unreadable: %s: %s", type(exc).__name__, exc)
            g.stockex_json_problem = (UNREADABLE_BODY, {})
        g.stockex_json = value
    return g.stockex_json


UNREADABLE_BODY = ("the request body could not be read (malformed chunked transfer coding, or "
                   "the connection was cut)")


def _syntax_problem(exc: json.JSONDecodeError) -> tuple[str, dict[str, Any]]:
    if not exc.doc.strip():
        return "the request body is empty: send a JSON object", {}
    what = exc.msg[:1].lower() + exc.msg[1:]
    return (f"the request body is not valid JSON: {what} (line {exc.lineno}, column "
            f"{exc.colno})", {"line": exc.lineno, "column": exc.colno})


def _refuse_content_encoding() -> None:
    """415 for a compressed body (RFC 9110 §15.5.16): it would otherwise be read as bytes
    that are no JSON, and refused as if the client had sent something else than JSON."""
    raw = request.environ.get("HTTP_CONTENT_ENCODING")  # as request.headers has it, faster
    encoding = raw.strip().lower() if raw else ""
    if encoding not in ("", "identity"):
        raise DomainError(
            f"Content-Encoding {encoding!r} is not supported: send the request body "
            "uncompressed", code="unsupported_content_encoding", status=415,
            details={"content_encoding": encoding}, headers={"Accept-Encoding": "identity"})


def json_body(fields: frozenset[str] | None = None) -> dict[str, Any]:
    """The request's JSON object; 400 ``invalid_json`` for anything else, and 400
    ``unknown_field`` for a key outside ``fields`` when given (a misspelt or unsupported
    key is refused, not silently ignored: ``{"role": "admin"}`` at register sets nothing).
    A compressed body is 415 ``unsupported_content_encoding``."""
    _refuse_content_encoding()
    data = request_json()
    if not isinstance(data, dict):  # a repeated key leaves None too
        if "stockex_json_duplicate" in g:
            key = g.stockex_json_duplicate
            raise InvalidInput(f"the key {key!r} appears more than once in the request body",
                               code="invalid_json", details={"field": key})
        message, details = g.get("stockex_json_problem",
                                 ("the request body must be a JSON object", {}))
        raise InvalidInput(message, code="invalid_json", details=details)
    if fields is not None:
        refuse_unknown_fields(data, fields)
    return data


def before_id_param() -> int | None:
    """``before_id`` (paging by id), None when absent or empty; 400 ``invalid_before_id``
    outside 1..BIGINT."""
    if not request.args.get("before_id"):
        return None
    return int_param("before_id", 0, 1, MAX_ID)


def int_param(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; 400 ``invalid_<name>`` otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    value = parse_int(raw)
    if value is None or not low <= value <= high:
        raise InvalidInput(
            f"{name} must be an integer in {low}..{high}, got {raw!r}",
            code=f"invalid_{name}",
            details={name: raw, "min": low, "max": high},
        )
    return value
