"""Database access: the engine, sessions and the one transaction helper every use case uses.

Two backends are supported, and every feature is tested on both:

* **MySQL** (production; MariaDB works too) through PyMySQL: InnoDB, utf8mb4,
  ``READ COMMITTED`` isolation, short connect timeouts so an outage answers 503 quickly.
  Deadlocks (1213) and lock wait timeouts (1205) roll the whole transaction back and
  :meth:`Database.transaction` runs it again, a bounded number of times.
* **SQLite** (the embedded default): WAL, foreign keys on, and write transactions open with
  ``BEGIN IMMEDIATE`` so writers serialize instead of failing half-way with "database is
  locked". Reads use ordinary deferred transactions and do not block writers.

Amounts are exact decimals on both: ``DECIMAL(36,18)`` on MySQL and, because SQLite has no
decimal type, a fixed-width text form that sorts like the number (see :class:`Amount`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Context, Decimal
from typing import Any, TypeVar

from pymysql.constants import CLIENT
from sqlalchemy import Engine, String, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import Numeric, TypeDecorator, TypeEngine

log = logging.getLogger(__name__)

T = TypeVar("T")

SCALE = 18
INTEGER_DIGITS = 18
_QUANTUM = Decimal(1).scaleb(-SCALE)
_MAX_AMOUNT = Decimal(10) ** INTEGER_DIGITS
# DECIMAL(36,18) needs 36 significant digits; the default context only carries 28.
_CONTEXT = Context(prec=INTEGER_DIGITS + SCALE + 4)

#: MySQL error codes after which InnoDB has rolled back and a retry is safe.
RETRYABLE_MYSQL_ERRORS = frozenset({1213, 1205})  # deadlock, lock wait timeout
DEFAULT_ATTEMPTS = 8


class AmountOutOfRange(ValueError):
    """A value does not fit DECIMAL(36,18) or is negative where only >= 0 is allowed."""


def quantize(value: Decimal) -> Decimal:
    """Round-free conversion to 18 decimal places; refuses values with more precision."""
    q = value.quantize(_QUANTUM, context=_CONTEXT)
    if q != value:
        raise AmountOutOfRange(f"{value} has more than {SCALE} decimal places")
    if abs(q) >= _MAX_AMOUNT:
        raise AmountOutOfRange(f"{value} does not fit DECIMAL(36,18)")
    return q


class Amount(TypeDecorator[Decimal]):
    """A non-negative exact decimal: ``DECIMAL(36,18)`` on MySQL, sortable text on SQLite.

    On SQLite the value is stored zero-padded to a fixed width
    (``000000000000000012.500000000000000000``), so ``ORDER BY``, ``MIN``/``MAX`` and
    comparisons with bound parameters behave exactly like the number. Arithmetic belongs in
    Python (SQLite's ``SUM`` would go through floats).
    """

    impl = Numeric(36, SCALE)
    cache_ok = True
    signed = False

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(INTEGER_DIGITS + SCALE + 2))
        return dialect.type_descriptor(Numeric(36, SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        number = quantize(value if isinstance(value, Decimal) else Decimal(str(value)))
        if number < 0 and not self.signed:
            raise AmountOutOfRange(f"negative amount {number}")
        if dialect.name != "sqlite":
            return number
        if self.signed:
            return str(number)
        whole, _, frac = f"{number:f}".partition(".")
        return f"{whole.zfill(INTEGER_DIGITS)}.{frac}"

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return value
        return Decimal(value).quantize(_QUANTUM, context=_CONTEXT)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal


class SignedAmount(Amount):
    """An exact decimal that may be negative (ledger deltas); not sortable on SQLite."""

    cache_ok = True
    signed = True


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which the database rolled back and running again is safe."""
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in RETRYABLE_MYSQL_ERRORS
    # SQLite: BEGIN IMMEDIATE waited busy_timeout and still could not get the write lock.
    return "database is locked" in str(exc.orig)


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """An engine configured for the backend named by ``url`` (see module docstring)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            parsed,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        _configure_sqlite(engine)
        return engine
    if backend == "mysql":
        return create_engine(
            parsed,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=3600,
            pool_timeout=5,
            isolation_level="READ COMMITTED",
            # MULTI_STATEMENTS: stockex.trading.batch sends a placement's writes in one round
            # trip (values always escaped by the driver, never pasted in). This replaces the
            # dialect's own client_flag, so FOUND_ROWS (which it sets for ORM row counts) is
            # named again here.
            connect_args={
                "charset": "utf8mb4",
                "connect_timeout": 2,
                "client_flag": CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS,
            },
        )
    raise ValueError(f"unsupported database backend {backend!r}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so we can say BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("stockex_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The engine plus session factories. One per process; cheap to share between threads."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, echo=echo)
        self.dialect = self.engine.dialect.name
        writer = self.engine.execution_options(stockex_write=True)
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)

    def transaction(
        self,
        work: Callable[[Session], T],
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """Run ``work(session)`` in one database transaction and commit it.

        Any exception rolls everything back and propagates. Deadlocks and lock wait timeouts
        (after which MySQL has already rolled back) run ``work`` again from the start with a
        fresh session, up to ``attempts`` times with a short jittered back-off; ``work`` must
        therefore have no side effects outside the session. Objects it returns stay readable
        after the commit.
        """
        for attempt in range(1, attempts + 1):
            session = self._write_sessions()
            try:
                result = work(session)
                session.commit()
                return result
            except BaseException as exc:
                session.rollback()
                if attempt >= attempts or not is_retryable(exc):
                    raise
                delay = min(0.5, 0.005 * 2**attempt) * (0.5 + random.random())  # noqa: S311
                log.info("retrying transaction after %s (attempt %d)", exc.orig, attempt)
                sleep(delay)
            finally:
                session.close()
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries only; whatever it did is rolled back at the end."""
        session = self._read_sessions()
        try:
            yield session
        finally:
            session.close()  # ends the transaction without expiring what was loaded

    def ping(self) -> None:
        """Raise if the database cannot answer ``SELECT 1`` right now."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()
