"""Log records that carry the request id, and the process-wide log format.

Every :class:`logging.LogRecord` created in the process gets a ``request_id`` attribute: the id
of the HTTP request being served on the current thread (see :mod:`stockex.api.request_log`),
or ``"-"`` outside a request. It is set through a record factory rather than a filter, so it is
present on records of every logger (ours, SQLAlchemy's, Werkzeug's) and any handler's format may
use ``%(request_id)s``.

``configure_logging()`` is what the CLI and, when nothing else configured logging (gunicorn),
the API call: one line per record on stderr, with the request id, passed through
:func:`stockex.redaction.redact` (plus the secrets given to :func:`register_secrets`) so that
an exception message carrying a database URL or a token does not put it in the log.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import traceback
from collections.abc import Iterable
from typing import IO, Any

from stockex.redaction import redact

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
NO_REQUEST = "-"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "stockex_request_id", default=NO_REQUEST
)

_installed = False
_secrets: set[str] = set()


def current_request_id() -> str:
    """The request id of the request being served on this thread, or ``"-"``."""
    return request_id_var.get()


def install_request_id_factory() -> None:
    """Make every new log record carry ``request_id`` (idempotent, process-wide)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def format_exception(exc: BaseException) -> str:
    """``traceback.format_exception(exc)`` without the ``^^^^`` lines under each frame.

    Python 3.11 finds where to put them with ``ast.parse``, and its AST constructor keeps its
    recursion count in state shared by every thread: an ``ast.parse`` in one thread (a
    traceback formatted for an alert or a log line) while another runs one too (Flask
    compiling routes in ``create_app``, another traceback) fails one of them with
    ``SystemError: AST constructor recursion depth mismatch``. Without column numbers the
    formatter never asks."""
    formatted = traceback.TracebackException.from_exception(exc)
    pending, seen = [formatted], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for frame in current.stack:
            frame.colno = frame.end_colno = None
        pending += [c for c in (current.__cause__, current.__context__) if c is not None]
        pending += getattr(current, "exceptions", None) or []  # an ExceptionGroup's
    return "".join(formatted.format())


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, traceback) has credentials replaced by ``***``."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        exc = ei[1] if isinstance(ei, tuple) else ei
        if isinstance(exc, BaseException):
            return format_exception(exc).rstrip("\n")
        return super().formatException(ei)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):  # another record factory replaced ours
            record.request_id = NO_REQUEST
        return redact(super().format(record), _secrets)


def register_secrets(secrets: Iterable[str]) -> None:
    """Literal secrets (from the settings) to blank out of every formatted log line."""
    _secrets.update(s for s in secrets if s)


def configure_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Log to ``stream`` (stderr) in :data:`LOG_FORMAT`, unless logging is configured already."""
    install_request_id_factory()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


install_request_id_factory()
