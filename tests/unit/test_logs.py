"""Log lines carry the request id and never a credential."""

from __future__ import annotations

import io
import logging

from stockex.logs import LOG_FORMAT, RedactingFormatter, register_secrets, request_id_var


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
