"""Log lines carry the request id and never a credential."""

from __future__ import annotations

import ast
import io
import logging
import traceback

import pytest

from stockex.logs import (
    LOG_FORMAT,
    RedactingFormatter,
    format_exception,
    register_secrets,
    request_id_var,
)


def test_log_lines_carry_the_request_id_and_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logger = logging.getLogger("stockex.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    register_secrets(["a-configured-secret-value"])
    token = request_id_var.set("req-9")
    try:
        try:
            raise RuntimeError("cannot reach mysql+pymysql://u:pw-in-url@db/x")
        except RuntimeError:
            logger.exception("failed with a-configured-secret-value and Bearer abcdefgh123")
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    logger.warning("outside a request")  # no handler left: just must not fail
    out = stream.getvalue()
    assert "[req-9] failed with *** and Bearer ***" in out
    assert "mysql+pymysql://u:***@db/x" in out and "Traceback" in out
    for secret in ("pw-in-url", "a-configured-secret-value", "abcdefgh123"):
        assert secret not in out


def test_records_outside_requests_have_a_dash() -> None:
    record = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert record.request_id == "-"  # type: ignore[attr-defined]


def test_a_record_without_request_id_still_formats() -> None:
    record = logging.makeLogRecord({"msg": "from elsewhere", "levelname": "INFO", "name": "x"})
    del record.__dict__["request_id"]
    assert "[-] from elsewhere" in RedactingFormatter(LOG_FORMAT).format(record)


def _failing_lookup() -> None:
    prices = {"asaxu": {}}
    prices["asaxu"]["bid"] + prices["asaxu"]["ask"]  # 3.11 marks this sub-expression with carets


def test_tracebacks_are_formatted_without_ast_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11 computes the ^^^^ lines with ast.parse, whose AST constructor shares its
    recursion count between threads: a traceback formatted for an alert on the notifier's
    thread while create_app compiled routes elsewhere failed with "SystemError: AST
    constructor recursion depth mismatch" (seen once in CI). Ours never parses."""
    calls: list[str] = []
    real_parse = ast.parse

    def counting_parse(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(source)
        return real_parse(source, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", counting_parse)
    try:
        _failing_lookup()
    except KeyError as exc:
        failure = exc
    traceback.format_exception(failure)
    if not calls:
        pytest.skip("this Python draws no carets with ast.parse")
    calls.clear()
    text = format_exception(failure)
    assert calls == []
    assert "_failing_lookup" in text and "KeyError: 'bid'" in text and "^" not in text
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    logger = logging.getLogger("stockex.test.carets")
    logger.addHandler(handler)
    logger.propagate = False  # only our formatter (others, e.g. pytest's, draw carets)
    try:
        logger.error("failed", exc_info=failure)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert calls == [] and "KeyError: 'bid'" in stream.getvalue()
