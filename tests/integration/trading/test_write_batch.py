"""WriteBatch: a transaction's writes in one round trip on MySQL, plain statements on SQLite;
driver errors surface as SQLAlchemy errors (so retries and error pages work as usual)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from stockex.batch import WriteBatch, mysql_cursor
from stockex.models import Account, LedgerEntry, User
from stockex.testing import lose_mysql_connection

USERS = User.__table__


def user_row(name: str) -> dict:
    return {"username": name, "email": None, "password_hash": "x", "role": "user",
            "created_at": 0}


def test_refs_carry_ids_between_statements(database) -> None:  # type: ignore[no-untyped-def]
    def work(session):  # type: ignore[no-untyped-def]
        batch = WriteBatch(session)
        first = batch.insert(USERS, user_row("one"))
        second = batch.insert(USERS, user_row("two"))
        account = batch.insert(Account.__table__, {"user_id": second, "asset": "XU",
                                                   "available": 5, "locked": 0,
                                                   "updated_at": 0})
        batch.insert_many(LedgerEntry.__table__, [
            {"account_id": account, "user_id": second, "asset": "XU", "delta_available": 5,
             "delta_locked": 0, "reason": "deposit", "ref_type": "user", "ref_id": first,
             "created_at": 0},
        ])
        batch.update_rows(USERS, {first: {"email": "a@b.cd"}}, {"created_at": 7})
        batch.flush()
        return int(first), int(second), int(account)

    first, second, account = database.transaction(work)
    with database.read() as session:
        ledger = session.execute(select(LedgerEntry.account_id, LedgerEntry.ref_id)).one()
        users = session.execute(select(User.id, User.email, User.created_at)
                                .order_by(User.id)).all()
    assert ledger == (account, first)
    assert users == [(first, "a@b.cd", 7), (second, None, 0)]


def test_unknown_columns_are_refused(database) -> None:  # type: ignore[no-untyped-def]
    def work(session):  # type: ignore[no-untyped-def]
        WriteBatch(session).insert(USERS, {"username; DROP TABLE users": "x"})

    with pytest.raises(ValueError, match="no column"):
        database.transaction(work)


def test_a_failing_statement_rolls_back_the_whole_batch(database) -> None:  # type: ignore[no-untyped-def]
    database.transaction(lambda s: _flushed(s, "taken"))

    def work(session):  # type: ignore[no-untyped-def]
        batch = WriteBatch(session)
        batch.insert(USERS, user_row("fresh"))
        batch.insert(USERS, user_row("taken"))  # duplicate username
        batch.flush()

    with pytest.raises(IntegrityError):
        database.transaction(work)
    with database.read() as session:
        assert list(session.scalars(select(User.username))) == ["taken"]


def _flushed(session, name: str) -> None:  # type: ignore[no-untyped-def]
    batch = WriteBatch(session)
    batch.insert(USERS, user_row(name))
    batch.flush()


@pytest.mark.mysql_only
def test_a_deadlock_in_raw_statements_is_retried(mysql_database) -> None:  # type: ignore[no-untyped-def]
    mysql_database.transaction(lambda s: _flushed(s, "a") or _flushed(s, "b"))
    with mysql_database.read() as session:
        ids = list(session.scalars(select(User.id).order_by(User.id)))
    barrier = threading.Barrier(2, timeout=10)
    attempts: list[int] = []
    errors: list[BaseException] = []

    def lock_both(order: list[int]) -> None:
        first_try = [True]

        def work(session):  # type: ignore[no-untyped-def]
            attempts.append(1)
            with mysql_cursor(session) as cursor:
                cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (order[0],))
                if first_try[0]:
                    first_try[0] = False
                    barrier.wait()  # both hold their first row: one of them must deadlock
                cursor.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (order[1],))

        try:
            mysql_database.transaction(work)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=lock_both, args=(o,)) for o in (ids, ids[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(attempts) >= 3  # someone ran twice: the deadlock was retried


@pytest.mark.mysql_only
def test_mysql_connections_keep_found_rows(mysql_database) -> None:  # type: ignore[no-untyped-def]
    """Enabling multi-statements must not drop FOUND_ROWS, which SQLAlchemy relies on: an
    UPDATE that matches a row but changes nothing still reports one row."""
    from sqlalchemy import update

    mysql_database.transaction(lambda s: _flushed(s, "same"))

    def work(session):  # type: ignore[no-untyped-def]
        return session.execute(
            update(User).where(User.username == "same").values(role="user")
        ).rowcount

    assert mysql_database.transaction(work) == 1


def test_a_batch_may_carry_the_commit(database) -> None:  # type: ignore[no-untyped-def]
    def work(session):  # type: ignore[no-untyped-def]
        batch = WriteBatch(session)
        ref = batch.insert(USERS, user_row("committed"))
        batch.flush(commit=True)
        return int(ref)

    user_id = database.transaction(work)
    with database.read() as session:
        assert session.scalar(select(User.id).where(User.username == "committed")) == user_id

    def failing(session):  # type: ignore[no-untyped-def]
        batch = WriteBatch(session)
        batch.insert(USERS, user_row("never"))
        batch.insert(USERS, user_row("committed"))  # duplicate: stops before the COMMIT
        batch.flush(commit=True)

    with pytest.raises(IntegrityError):
        database.transaction(failing)
    with database.read() as session:
        assert list(session.scalars(select(User.username))) == ["committed"]


def test_work_after_a_batch_commit_is_committed_too(database) -> None:  # type: ignore[no-untyped-def]
    """A write after flush(commit=True) (here an ORM object the session flushes at commit)
    runs in a new transaction; it must be committed, not dropped or left open."""
    def work(session):  # type: ignore[no-untyped-def]
        batch = WriteBatch(session)
        batch.insert(USERS, user_row("in-batch"))
        batch.flush(commit=True)
        session.add(User(**user_row("after-batch")))

    from stockex.db import Database

    database.transaction(work)
    # Read through other connections: the pool hands the same one back, which would see
    # its own uncommitted row.
    other = Database(database.url)
    try:
        with other.read() as session:
            assert sorted(session.scalars(select(User.username))) == ["after-batch", "in-batch"]
    finally:
        other.dispose()


def _session_counters(db) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """This pooled connection's COMMIT/ROLLBACK counts (MariaDB counts per session)."""
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Com_commit', "
                       "'Com_rollback')")
        return {name: int(value) for name, value in cursor.fetchall()}
    finally:
        raw.close()  # a raw read: returned with a ROLLBACK (counted from the next call on)


@pytest.mark.mysql_only
def test_connections_go_back_to_the_pool_with_one_end_of_transaction(mysql_database) -> None:  # type: ignore[no-untyped-def]
    """A COMMIT is not followed by a needless ROLLBACK on return to the pool (neither after
    the session's commit nor after a batch's own); a raw read and a failure still are."""
    from stockex.db import Database

    db = Database(mysql_database.url, pool_size=1)  # one connection, reused throughout
    try:
        def delta(action) -> dict[str, int]:  # type: ignore[no-untyped-def]
            before = _session_counters(db)
            action()
            after = _session_counters(db)
            # minus the ROLLBACK that returned the first _session_counters' connection
            return {"commit": after["Com_commit"] - before["Com_commit"],
                    "rollback": after["Com_rollback"] - before["Com_rollback"] - 1}

        assert delta(lambda: db.transaction(lambda s: _flushed(s, "x1"))) == {
            "commit": 1, "rollback": 0}

        def batch_commit(session):  # type: ignore[no-untyped-def]
            batch = WriteBatch(session)
            batch.insert(USERS, user_row("x2"))
            batch.flush(commit=True)

        assert delta(lambda: db.transaction(batch_commit)) == {"commit": 1, "rollback": 0}
        by_name = select(User.id).where(User.username == bindparam("name"))
        assert delta(lambda: db.first_value(by_name, {"name": "x2"})) == {
            "commit": 0, "rollback": 1}

        def duplicate(session):  # type: ignore[no-untyped-def]
            _flushed(session, "x1")

        def fail() -> None:
            with pytest.raises(IntegrityError):
                db.transaction(duplicate)

        assert delta(fail) == {"commit": 0, "rollback": 1}
    finally:
        db.dispose()


@pytest.mark.mysql_only
def test_a_connection_lost_at_the_commit_says_the_outcome_is_unknown(  # type: ignore[no-untyped-def]
    mysql_database, monkeypatch
) -> None:
    """Lost while the COMMIT was on its way (in a batch's last query, or the helper's own),
    the transaction may have committed: CommitOutcomeUnknown, never retried, and not the
    plain "not reachable" of a connection lost before anything could have been committed."""
    from sqlalchemy.exc import DBAPIError

    from stockex import batch as batch_module
    from stockex.db import CommitOutcomeUnknown

    class AnswerLost:
        def __init__(self, cursor) -> None:  # type: ignore[no-untyped-def]
            self.cursor = cursor

        def execute(self, sql: str) -> None:
            self.cursor.execute(sql)  # MySQL runs all of it, COMMIT included
            while self.cursor.nextset():
                pass
            lose_mysql_connection(self.cursor.connection)

    real_cursor = batch_module.mysql_cursor

    @contextmanager
    def losing_cursor(session):  # type: ignore[no-untyped-def]
        with real_cursor(session) as cursor:
            yield AnswerLost(cursor)

    runs: list[str] = []

    def in_batch(session):  # type: ignore[no-untyped-def]
        runs.append("batch")
        batch = WriteBatch(session)
        batch.insert(USERS, user_row("in-batch"))
        batch.flush(commit=True)

    monkeypatch.setattr(batch_module, "mysql_cursor", losing_cursor)
    with pytest.raises(CommitOutcomeUnknown) as lost:
        mysql_database.transaction(in_batch)
    assert lost.value.connection_invalidated and "COMMIT" in lost.value.statement
    monkeypatch.setattr(batch_module, "mysql_cursor", real_cursor)

    dialect = mysql_database.engine.dialect
    real_commit = dialect.do_commit

    def commit_lost(dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        real_commit(dbapi_connection)
        lose_mysql_connection(dbapi_connection)

    def by_session(session):  # type: ignore[no-untyped-def]
        runs.append("session")
        session.add(User(**user_row("by-session")))

    monkeypatch.setattr(dialect, "do_commit", commit_lost)
    with pytest.raises(CommitOutcomeUnknown):
        mysql_database.transaction(by_session)
    monkeypatch.setattr(dialect, "do_commit", real_commit)

    def lost_before_commit(session):  # type: ignore[no-untyped-def]
        runs.append("early")
        session.add(User(**user_row("never")))
        session.flush()
        session.add(User(**user_row("nor-this")))
        session.connection().connection.driver_connection._force_close()
        session.flush()  # the next statement finds the connection gone

    with pytest.raises(DBAPIError) as early:  # nothing was committed: the usual error
        mysql_database.transaction(lost_before_commit)
    assert early.value.connection_invalidated
    assert not isinstance(early.value, CommitOutcomeUnknown)
    assert runs == ["batch", "session", "early"]  # none retried
    with mysql_database.read() as session:  # here both had committed
        assert sorted(session.scalars(select(User.username))) == ["by-session", "in-batch"]
