"""Database access: the engine, sessions and the one transaction helper every use case uses.

Two backends are supported, and every feature is tested on both:

* **MySQL** (production; MariaDB works too) through PyMySQL: InnoDB, utf8mb4,
  ``READ COMMITTED`` isolation. An outage must answer 503 quickly and heal by itself: the TCP
  connect and the login handshake each give up after 2 s, a pooled connection is pinged
  (bounded to 1 s) before its first use in a request so dead ones left by a restart are
  replaced transparently (:mod:`stockex.mysql_pool`), and a refused connection fails at once.
  Queries themselves have no read timeout (a long migration must not be cut off).
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
import re
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Context, Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from pymysql.constants import CLIENT
from sqlalchemy import Engine, Integer, String, Table, create_engine, event
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.types import Numeric, TypeDecorator, TypeEngine

from stockex.mysql_pool import (
    CONNECT_TIMEOUT_SECONDS,
    configure_mysql_engine,
    mark_answered,
    unpinged_checkout,
)
from stockex.numbers import MAX_AMOUNT

if TYPE_CHECKING:
    from stockex.batch import WriteBatch

log = logging.getLogger(__name__)

T = TypeVar("T")

SCALE = 18
INTEGER_DIGITS = 18
_QUANTUM = Decimal(1).scaleb(-SCALE)
# DECIMAL(36,18) needs 36 significant digits; the default context only carries 28.
_CONTEXT = Context(prec=INTEGER_DIGITS + SCALE + 4)


#: MySQL error codes after which InnoDB has rolled back and a retry is safe.
RETRYABLE_MYSQL_ERRORS = frozenset({1213, 1205})  # deadlock, lock wait timeout
DEFAULT_ATTEMPTS = 8


class AmountOutOfRange(ValueError):
    """A value does not fit DECIMAL(36,18) or is negative where only >= 0 is allowed."""


def quantize(value: Decimal) -> Decimal:
    """Round-free conversion to 18 decimal places; refuses values with more precision, too
    large (the magnitude first: from 10^22 on the quantize itself would overflow its
    context) and not finite."""
    if not value.is_finite() or value.copy_abs() >= MAX_AMOUNT:  # copy_abs is exact
        raise AmountOutOfRange(f"{value} does not fit DECIMAL(36,18)")
    q = value.quantize(_QUANTUM, context=_CONTEXT)
    if q != value:
        raise AmountOutOfRange(f"{value} has more than {SCALE} decimal places")
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
        given = value if isinstance(value, Decimal) else Decimal(str(value))
        number = quantize(given)
        if number < 0 and not self.signed:
            raise AmountOutOfRange(f"negative amount {number}")
        if dialect.name != "sqlite":
            # The value as given, now known to fit: MySQL pads it to 18 places itself, and the
            # short literal ("25012", not "25012.000000000000000000") is cheaper to send.
            return given
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


# --------------------------------------------------------------------------- bulk upserts

#: Rows per statement on MySQL: ~170 bytes each, far below any max_allowed_packet.
UPSERT_ROWS_PER_STATEMENT = 5000


def upsert_rows(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str],
    updates: Sequence[str],
    *,
    batch: WriteBatch | None = None,
) -> None:
    """Insert ``rows`` (tuples of values for ``columns``, in that order) into ``table``; on a
    duplicate ``key`` overwrite the ``updates`` columns. Runs inside the session's transaction.

    SQLite: ``INSERT ... ON CONFLICT DO UPDATE`` through SQLAlchemy's executemany.

    MySQL: ``INSERT ... VALUES (...), (...) ON DUPLICATE KEY UPDATE`` with the values written
    as literals, because per-row parameter processing (SQLAlchemy's plus the driver's
    escaping) costs several times what the database itself needs for a crawl's bulk writes.
    The literals are exactly what the bound path would send: integers as ``int``, amounts
    checked by :class:`Amount`'s own rules (AmountOutOfRange for negative, too many decimals,
    too large), anything else quoted by the driver's own escaping. Rendering goes column by
    column: a column of plain ``Decimal`` amounts is checked with one regular expression over
    its joined text, and only a column that fails it takes the per-value path that names the
    problem. With a MySQL ``batch`` the statements are added to it instead of run at once.
    """
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "mysql":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(key), set_={c: stmt.excluded[c] for c in updates}
        )
        session.execute(stmt, [dict(zip(columns, row, strict=True)) for row in rows])
        return
    for statement in _mysql_upserts(connection, table, columns, rows, updates):
        if batch is not None:
            batch.statement(statement)
        else:
            # Literals only, no placeholders; but exec_driver_sql has PyMySQL %-format the text.
            connection.exec_driver_sql(statement.replace("%", "%%"))


def _mysql_upserts(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    updates: Sequence[str],
) -> list[str]:
    """The complete MySQL statements of :func:`upsert_rows` (``ON DUPLICATE KEY UPDATE``
    finds the key itself)."""
    quote = connection.dialect.identifier_preparer.quote
    driver_literal = connection.connection.dbapi_connection.escape  # type: ignore[union-attr]
    render = [_column_renderer(table.c[name].type, connection.dialect, driver_literal)
              for name in columns]
    # Quoted identifiers from the table's metadata and the literals described above.
    head = f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) VALUES "  # noqa: S608
    tail = " ON DUPLICATE KEY UPDATE " + ", ".join(
        f"{quote(c)} = VALUES({quote(c)})" for c in updates
    )
    statements = []
    for start in range(0, len(rows), UPSERT_ROWS_PER_STATEMENT):
        batch = rows[start : start + UPSERT_ROWS_PER_STATEMENT]
        texts = [r(values) for r, values in zip(render, zip(*batch, strict=True), strict=True)]
        values = "),(".join(map(",".join, zip(*texts, strict=True)))
        statements.append(f"{head}({values}){tail}")
    return statements


# A plain non-negative decimal within DECIMAL(36,18), as str(Decimal) writes one.
_PLAIN_AMOUNT = rf"[0-9]{{1,{INTEGER_DIGITS}}}(?:\.[0-9]{{1,{SCALE}}})?"
_PLAIN_AMOUNTS = re.compile(rf"{_PLAIN_AMOUNT}(?:,{_PLAIN_AMOUNT})*")


def _column_renderer(
    column_type: TypeEngine[Any], dialect: Dialect, driver_literal: Callable[[Any], str]
) -> Callable[[Sequence[Any]], list[str]]:
    """A function from one column's values to their SQL literals."""
    if isinstance(column_type, Amount):

        def one_amount(value: Any) -> str:
            if value is None:
                return "NULL"
            # The bind processor's own checks: AmountOutOfRange for what the column refuses.
            return f"{column_type.process_bind_param(value, dialect):f}"

        def amounts(values: Sequence[Any]) -> list[str]:
            if not column_type.signed and set(map(type, values)) == {Decimal}:
                texts = list(map(str, values))
                # Exponent notation, a sign, NaN or too many digits fail the match.
                if _PLAIN_AMOUNTS.fullmatch(",".join(texts)):
                    return texts
            return list(map(one_amount, values))

        return amounts
    if isinstance(column_type, Integer):

        def integers(values: Sequence[Any]) -> list[str]:
            if set(map(type, values)) == {int}:  # exact: bool is an int subclass
                return list(map(str, values))
            return [str(v) if type(v) is int else driver_literal(v) for v in values]

        return integers

    def others(values: Sequence[Any]) -> list[str]:
        first = values[0]
        if type(first) is str and values.count(first) == len(values):
            return [driver_literal(first)] * len(values)  # one market id on every row
        return [driver_literal(v) for v in values]

    return others


#: What to do when the schema is missing or behind (a table not found, /ready's check).
RUN_UPGRADE = "the database schema is not migrated: run `stockex db upgrade`"


def driver_error_is(
    exc: BaseException, mysql: Container[int], sqlite: Callable[[str], bool] = lambda _: False
) -> bool:
    """Whether ``exc`` is a driver error with one of the ``mysql`` error numbers (PyMySQL puts
    the number first in its args) or, from SQLite (a message only), one ``sqlite`` accepts."""
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in mysql
    return sqlite(str(exc.orig))


def is_missing_table(exc: BaseException) -> bool:
    """True for a query on a table that does not exist: the schema was never migrated here
    (or ``database.url`` points at another database). MySQL error 1146 (ER_NO_SUCH_TABLE)."""
    return driver_error_is(exc, (1146,), lambda message: message.startswith("no such table"))


#: SQLite waits this long for another connection's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_SECONDS = 30

#: SQLite's plain SQLITE_BUSY: its busy handler already waited the whole busy timeout.
_SQLITE_BUSY = 5
# Primary result codes (https://sqlite.org/rescode.html) that say the database file, its
# directory or its disk is unusable: the operator's to fix, like a MySQL server that is down.
# SQLITE_ERROR (no such table, a syntax error) is not among them: a bug or a missing migration.
_SQLITE_UNAVAILABLE = {
    14: "cannot open the SQLite database file {path}: its directory must exist and be "
        "writable by this process, and the path must not be a directory",  # SQLITE_CANTOPEN
    8: "the SQLite database file {path} is read-only for this process, which must be able "
       "to write the file, its -wal and -shm files and their directory",  # SQLITE_READONLY
    _SQLITE_BUSY: "the SQLite database file {path} is locked: another connection (this "
                  "process or another) held its write lock for more than "
                  f"{SQLITE_BUSY_TIMEOUT_SECONDS} s",
    10: "disk I/O error on the SQLite database file {path}: check its disk and file "
        "system",  # SQLITE_IOERR
    13: "the disk holding the SQLite database file {path} is full",  # SQLITE_FULL
    26: "{path} is not a SQLite database file: check database.url",  # SQLITE_NOTADB
    11: "the SQLite database file {path} is corrupt (database disk image is malformed): "
        "restore it from a backup",  # SQLITE_CORRUPT
}


def sqlite_unavailable(exc: BaseException, path: str | None) -> str | None:
    """What is wrong, for the operator, when ``exc`` is SQLite failing on the database file
    ``path`` (as database.url names it) itself: it cannot be opened, is read-only, locked
    past the busy timeout, on a failing or full disk, not a database, or corrupt. None for
    any other error, SQLite's "no such table" and syntax errors included."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    code = getattr(orig, "sqlite_errorcode", None)  # sqlite3's errors only, Python >= 3.11
    if not isinstance(code, int):
        return None
    reason = _SQLITE_UNAVAILABLE.get(code & 0xFF)  # extended codes carry the primary one
    return None if reason is None else reason.format(path=path or ":memory:")


def is_retryable(exc: BaseException) -> bool:
    """True for errors after which the database rolled back and running again is safe.

    On SQLite, "database is locked" except the plain SQLITE_BUSY that comes after
    BEGIN IMMEDIATE waited the whole busy timeout (:data:`SQLITE_BUSY_TIMEOUT_SECONDS`) for
    another connection's write lock: trying again would wait as long once more, and
    :data:`DEFAULT_ATTEMPTS` of them four minutes, long after the client and gunicorn's
    worker timeout gave up; the caller gets the 503 at once instead.
    """
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlite_errorcode", None) == _SQLITE_BUSY:
        return False
    return driver_error_is(exc, RETRYABLE_MYSQL_ERRORS,
                           lambda message: "database is locked" in message)


class CommitOutcomeUnknown(DBAPIError):
    """The connection was lost while the transaction's COMMIT was on its way (sent by the
    helper, or as the last statement of ``work``'s last query): the database committed all of
    it or none, and nobody here can tell which. Never retried; whoever asked must look before
    repeating it."""

    outcome = (
        "the connection to the database was lost while committing: the change may or may not "
        "have been made; look before repeating it"
    )


def _lost_while_committing(exc: BaseException, committing: bool) -> DBAPIError | None:
    """``exc`` if it is a lost connection while the COMMIT was on its way, else None."""
    if not isinstance(exc, DBAPIError) or not exc.connection_invalidated:
        return None
    if committing or (exc.statement or "").rstrip().endswith("COMMIT"):
        return exc
    return None


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    """An engine configured for the backend named by ``url`` (see module docstring)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            parsed,
            echo=echo,
            connect_args={"check_same_thread": False,
                          "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        _configure_sqlite(engine)
        return engine
    if backend == "mysql":
        engine = create_engine(
            parsed,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            # Connections are pinged before use by stockex.mysql_pool's checkout listener (the
            # same check as pool_pre_ping, but once per request scope).
            pool_pre_ping=False,
            pool_use_lifo=True,  # a request's next checkout gets the connection it used
            # Reset on return is done by stockex.mysql_pool's listener: a ROLLBACK only when the
            # connection may still be inside a transaction (not after a COMMIT).
            pool_reset_on_return=None,
            pool_recycle=3600,
            pool_timeout=5,
            isolation_level="READ COMMITTED",
            # MULTI_STATEMENTS: stockex.batch sends the writes of a placement (and of a crawled
            # chunk) in one round trip. This replaces the dialect's own client_flag, so
            # FOUND_ROWS (which it sets for ORM row counts) is named again here.
            connect_args={
                "charset": "utf8mb4",
                "client_flag": CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                # Bounds the server greeting and login of a new connection (a hung server
                # accepts TCP but never answers); lifted again once connected, see below.
                "read_timeout": CONNECT_TIMEOUT_SECONDS,
            },
        )
        configure_mysql_engine(engine)
        return engine
    raise ValueError(f"unsupported database backend {backend!r}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so we can say BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("stockex_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def as_sqlalchemy_error(
    exc: Exception, connection: Any, dialect: Dialect, statement: str | None = None,
    params: Any = None,
) -> DBAPIError:
    """The SQLAlchemy error for a driver error raised on a pooled DBAPI ``connection`` used
    directly (``Database.first_value``, the crawler's held reads), as ``Session.execute``
    would raise it: ``IntegrityError``, ``OperationalError``, ... with
    ``connection_invalidated`` set, and the connection invalidated (not pooled again), when
    the server is gone. Callers ``raise as_sqlalchemy_error(...) from exc``."""
    gone = dialect.is_disconnect(exc, connection.dbapi_connection, None)
    if gone:
        connection.invalidate(exc)
    return DBAPIError.instance(  # type: ignore[no-any-return]
        statement, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone
    )


class Database:
    """The engine plus session factories. One per process; cheap to share between threads."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, echo=echo)
        self.dialect = self.engine.dialect.name
        writer = self.engine.execution_options(stockex_write=True)
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._compiled_cache: dict[Executable, tuple[str, tuple[str, ...]]] = {}

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
        after the commit. On MySQL ``work`` may end the transaction itself with COMMIT as the
        last statement of its last query (``WriteBatch.flush(commit=True)``); the commit here
        then sends nothing. A connection lost while the COMMIT was on its way raises
        :class:`CommitOutcomeUnknown` (the database may have committed).
        """
        for attempt in range(1, attempts + 1):
            session = self._write_sessions()
            committing = False
            try:
                result = work(session)
                committing = True
                session.commit()
                return result
            except BaseException as exc:
                if isinstance(exc, Exception):
                    session.rollback()
                else:
                    # Ctrl-C or SystemExit (a worker's timeout) may have cut a raw driver read
                    # (CandleReads, WriteBatch) short: the rest of the answer is still on the
                    # wire, and a ROLLBACK there fails ("Packet sequence number wrong") with an
                    # error that would replace the interrupt. The server rolls back the
                    # dropped connection's transaction itself.
                    session.invalidate()
                lost = _lost_while_committing(exc, committing)
                if lost is not None:
                    raise CommitOutcomeUnknown(
                        lost.statement, lost.params, lost.orig, connection_invalidated=True
                    ) from exc
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

    def first_value(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        """The first column of the first row of a read-only ``statement``, or None.

        For lookups made on every request (token revocation): it runs on a pooled DBAPI
        connection directly, without a Session or SQLAlchemy's result processing, which cost
        more than the query. So only for columns whose driver value is already the Python
        value (integers, strings; not :class:`Amount` on SQLite). Driver errors come out as
        SQLAlchemy's (a lost connection is invalidated and flagged, so the API answers 503).

        On MySQL the lookup itself does the checkout ping's job: it takes a pooled connection
        without pinging it, with a read timeout (a hung server answers 503 within
        ``CONNECT_TIMEOUT_SECONDS``), and if that connection turns out dead (a restart) it
        runs once more on a pinged one, as a read safely can. Having answered, the
        connection counts as checked for the rest of the request scope.
        """
        sql, names = self._compiled(statement)
        # Positional paramstyles (SQLite's qmark) take a tuple, PyMySQL's pyformat a mapping.
        values: Any = tuple(params[name] for name in names) if names else dict(params)
        if self.engine.dialect.name != "mysql":
            return self._first_value(sql, values, trusted=False)
        try:
            return self._first_value(sql, values, trusted=True)
        except DBAPIError as exc:
            if not exc.connection_invalidated or "timed out" in str(exc.orig):
                raise
        return self._first_value(sql, values, trusted=False)  # the pool pings this one

    def _first_value(self, sql: str, values: Any, *, trusted: bool) -> Any:
        dialect = self.engine.dialect
        mysql = dialect.name == "mysql"
        try:
            with unpinged_checkout(trusted):
                connection = self.engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:  # cannot connect: as Engine.connect says it
            raise DBAPIError.instance(
                None, None, exc, dialect.loaded_dbapi.Error,
                connection_invalidated=dialect.is_disconnect(exc, None, None),
            ) from exc
        driver = connection.dbapi_connection
        try:
            cursor = connection.cursor()
            try:
                if trusted:
                    driver._read_timeout = CONNECT_TIMEOUT_SECONDS  # type: ignore[union-attr]
                # MySQL: the read's transaction ends in the same round trip (multi-statement),
                # so the pool sends no ROLLBACK when the connection goes back.
                cursor.execute(sql + ";\nROLLBACK" if mysql else sql, values)
                row = cursor.fetchone()
                if mysql:
                    cursor.nextset()
                    mark_answered(connection)
            except dialect.loaded_dbapi.Error as exc:
                raise as_sqlalchemy_error(exc, connection, dialect, sql, values) from exc
            finally:
                if trusted and connection.dbapi_connection is not None:
                    connection.dbapi_connection._read_timeout = None  # type: ignore[union-attr]
                cursor.close()
        finally:
            connection.close()  # back to the pool, which ends the read's transaction if needed
        return None if row is None else row[0]

    def _compiled(self, statement: Executable) -> tuple[str, tuple[str, ...]]:
        """The statement's SQL for this dialect and, for a positional paramstyle, its parameter
        names in order (cached)."""
        found = self._compiled_cache.get(statement)
        if found is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            found = (compiled.string, tuple(compiled.positiontup or ()))
            self._compiled_cache[statement] = found
        return found

    def unavailable(self, exc: BaseException) -> str | None:
        """:func:`sqlite_unavailable` for this database's file (None on MySQL)."""
        if self.dialect != "sqlite":
            return None
        return sqlite_unavailable(exc, self.engine.url.database)

    def ping(self) -> None:
        """Raise if the database cannot answer ``SELECT 1`` right now."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()
