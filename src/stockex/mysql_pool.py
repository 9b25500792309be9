"""How stockex's pooled MySQL connections are checked, reset and ended (PyMySQL).

Every round trip to MySQL costs CPU on both sides (PyMySQL is pure Python), so the pool
does no more of them than correctness needs:

* **Bounded handshakes and pings.** The TCP connect and the login handshake give up after
  ``CONNECT_TIMEOUT_SECONDS`` (set in :func:`stockex.db.make_engine`); PyMySQL reads its
  ``_read_timeout`` before every packet, so it is lifted once connected (queries have no
  read timeout: a long migration must not be cut off) and set again around each ping.
* **A ping before use, once per request scope.** A pooled connection is pinged (bounded to
  ``PING_TIMEOUT_SECONDS``) before it is used, so that one left dead by a restart, or stuck
  on a hung server, is replaced instead of failing the request; a failed ping condemns the
  whole pool, as SQLAlchemy's ``pool_pre_ping`` does. Within one request scope
  (:func:`start_request_scope`, which the API opens per HTTP request) a connection the
  request already used is not pinged again, and :func:`unpinged_checkout` lets a caller
  whose own query checks the connection (``Database.first_value``) skip the ping.
* **A ROLLBACK on return only when one may be needed.** SQLAlchemy returns a connection with
  a ROLLBACK even right after a COMMIT. Here the dialect's begin/commit/rollback mark the
  connection, and the pool's reset skips the ROLLBACK after a COMMIT or ROLLBACK; anything
  else (a raw read, a failure half-way) still gets it.
* **A COMMIT inside the last query.** :func:`note_committed` records that the session's last
  multi-statement query ended with COMMIT, so the transaction helper sends none of its own.
  Any statement executed after it (an ORM flush at commit, a late query) drops the mark:
  it ran in a new transaction, which the helper then commits as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session

CONNECT_TIMEOUT_SECONDS = 2
PING_TIMEOUT_SECONDS = 1

_request_scope: ContextVar[object | None] = ContextVar("stockex_db_request", default=None)
_unpinged_checkout: ContextVar[bool] = ContextVar("stockex_db_unpinged", default=False)
#: On a pooled connection's ``info``: the request scope that last checked it (or _FRESH).
_VERIFIED_IN = "stockex_verified_in"
_FRESH = object()
#: Set on a pooled connection's ``info`` when its last transaction ended (COMMIT or ROLLBACK
#: through the dialect) and nothing began since; cleared when it is checked out or begins.
_ENDED = "stockex_transaction_ended"
#: Set by :func:`note_committed` when the session's last query already ended with COMMIT.
_COMMITTED = "stockex_committed"


def start_request_scope() -> None:
    """Mark the start of one request on this thread (the API calls it per HTTP request).

    Within the scope a connection the request already used, moments ago, is not pinged
    again: an authenticated placement checks out twice (token revocation, then the
    transaction) and the second ping was a round trip for nothing.
    """
    _request_scope.set(object())


def end_request_scope() -> None:
    _request_scope.set(None)


@contextmanager
def unpinged_checkout(enabled: bool = True) -> Iterator[None]:
    """Checkouts inside skip the ping: the caller's own first query must detect a dead or
    hung connection (with a read timeout) and then call :func:`mark_answered`."""
    token = _unpinged_checkout.set(enabled)
    try:
        yield
    finally:
        _unpinged_checkout.reset(token)


def mark_answered(connection: Any) -> None:
    """A pooled connection just answered a read ending with ROLLBACK: it is alive for this
    request scope and needs no ROLLBACK on return."""
    connection.info[_ENDED] = True
    connection.info[_VERIFIED_IN] = _request_scope.get()


def note_committed(session: Session) -> None:
    """The session's last query ended with COMMIT (a MySQL multi-statement query, see
    :meth:`stockex.batch.WriteBatch.flush`): the transaction helper's commit then
    ends the session without sending a second COMMIT."""
    session.connection().connection.info[_COMMITTED] = True


def configure_mysql_engine(engine: Engine) -> None:
    """Install the behaviour described in the module docstring on a MySQL engine."""

    @event.listens_for(engine, "connect")
    def _after_handshake(dbapi_connection: Any, record: Any) -> None:
        if hasattr(dbapi_connection, "_read_timeout"):
            dbapi_connection._read_timeout = None
        record.info[_VERIFIED_IN] = _FRESH

    original_ping = engine.dialect.do_ping

    def bounded_ping(dbapi_connection: Any) -> bool:
        previous = getattr(dbapi_connection, "_read_timeout", None)
        dbapi_connection._read_timeout = PING_TIMEOUT_SECONDS
        try:
            return original_ping(dbapi_connection)
        finally:
            dbapi_connection._read_timeout = previous

    engine.dialect.do_ping = bounded_ping  # type: ignore[method-assign]

    @event.listens_for(engine, "checkout")
    def _ping_before_use(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        """pool_pre_ping, except for a connection this request scope already used."""
        if _unpinged_checkout.get():
            return  # Database.first_value checks this connection with its own query
        scope = _request_scope.get()
        seen = record.info.get(_VERIFIED_IN)
        if seen is not _FRESH and (scope is None or seen is not scope):
            try:
                alive = bounded_ping(dbapi_connection)
            except Exception:  # noqa: BLE001 - a connection that cannot ping is not usable
                alive = False
            if not alive:
                # As pool_pre_ping does: one dead connection (a restart) condemns every
                # connection pooled before now, and this checkout gets a new one.
                raise InvalidatePoolError("ping failed")
        record.info[_VERIFIED_IN] = scope

    _end_transactions_once(engine)


def _end_transactions_once(engine: Engine) -> None:
    """Make the pool's reset-on-return a ROLLBACK only when one may be needed.

    SQLAlchemy returns a connection to the pool with a ROLLBACK even right after the session
    committed: a round trip (client and server CPU) for nothing on every write. Here the
    dialect's begin/commit/rollback mark the connection, and the pool's reset skips the
    ROLLBACK when the last thing that happened was a COMMIT or ROLLBACK. Anything else -
    a raw DBAPI read (``first_value``), an error half-way - still gets the ROLLBACK.
    It also lets a transaction end with COMMIT inside its last multi-statement query
    (:func:`note_committed`) without a second COMMIT.
    """
    dialect = engine.dialect
    begin, commit, rollback = dialect.do_begin, dialect.do_commit, dialect.do_rollback

    def info(connection: Any) -> dict[str, Any]:
        try:
            return connection.info  # type: ignore[no-any-return]
        except NotImplementedError:  # the ad-hoc connection of the dialect's first connect
            return {}

    def do_begin(connection: Any) -> None:
        info(connection)[_ENDED] = False
        begin(connection)

    def do_commit(connection: Any) -> None:
        marks = info(connection)
        if not marks.pop(_COMMITTED, False):
            commit(connection)
        marks[_ENDED] = True

    def do_rollback(connection: Any) -> None:
        marks = info(connection)
        marks.pop(_COMMITTED, None)
        rollback(connection)
        marks[_ENDED] = True

    dialect.do_begin = do_begin  # type: ignore[method-assign]
    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]

    @event.listens_for(engine, "before_cursor_execute")
    def _not_committed_any_more(connection: Any, *_args: Any) -> None:
        # A statement after the batch's COMMIT opened a new transaction: the helper's commit
        # must really commit it (and the pool must not take it back with it still open).
        connection.connection.info.pop(_COMMITTED, None)

    @event.listens_for(engine, "checkout")
    def _checked_out(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        record.info[_ENDED] = False
        record.info.pop(_COMMITTED, None)

    @event.listens_for(engine, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if state.transaction_was_reset or not state.asyncio_safe:
            return
        if record is not None and record.info.get(_ENDED):
            return
        dbapi_connection.rollback()
