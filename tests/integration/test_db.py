"""The unit of work, exact amounts, and the migrations, on SQLite and the real MySQL."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from stockex.db import Amount, AmountOutOfRange, Database
from stockex.migrate import current_revision, drift, head_revision, upgrade
from stockex.models import Account, Candle, Market, User


def add_user(session, name: str = "alice") -> User:  # type: ignore[no-untyped-def]
    user = User(username=name, password_hash="x", role="user", created_at=0)
    session.add(user)
    session.flush()
    return user


def count(db: Database, model) -> int:  # type: ignore[no-untyped-def]
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def test_commit_writes_everything(database: Database) -> None:
    def work(session):  # type: ignore[no-untyped-def]
        user = add_user(session)
        session.add(Account(user_id=user.id, asset="XU", available=Decimal("5"), locked=0,
                            updated_at=0))
        return user.id

    user_id = database.transaction(work)
    with database.read() as s:
        account = s.scalars(select(Account).where(Account.user_id == user_id)).one()
    assert account.available == Decimal("5")


def test_failure_half_way_leaves_nothing(database: Database) -> None:
    def work(session):  # type: ignore[no-untyped-def]
        add_user(session, "bob")
        session.add(Account(user_id=999_999, asset="XU", available=0, locked=0, updated_at=0))
        session.flush()  # the foreign key fails here, after the user row was written

    with pytest.raises(IntegrityError):
        database.transaction(work)
    assert count(database, User) == 0
    assert count(database, Account) == 0


def test_python_error_half_way_rolls_back(database: Database) -> None:
    def work(session):  # type: ignore[no-untyped-def]
        add_user(session, "carol")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        database.transaction(work)
    assert count(database, User) == 0


def test_negative_balance_is_impossible_in_the_database(mysql_database: Database) -> None:
    """The CHECK constraint holds even for raw SQL that bypasses every Python check."""
    db = mysql_database

    def setup(session):  # type: ignore[no-untyped-def]
        user = add_user(session)
        session.add(Account(user_id=user.id, asset="XU", available=1, locked=0, updated_at=0))

    db.transaction(setup)

    def overdraw(session):  # type: ignore[no-untyped-def]
        session.execute(text("UPDATE accounts SET available = available - 2"))

    # MySQL 8 says 3819 (IntegrityError), MariaDB 4025 (OperationalError): both name the CHECK.
    with pytest.raises((IntegrityError, OperationalError), match="available_non_negative"):
        db.transaction(overdraw)
    with db.read() as s:
        assert s.scalar(select(Account.available)) == Decimal("1")


def test_negative_amount_is_refused_before_sql(database: Database) -> None:
    def work(session):  # type: ignore[no-untyped-def]
        user = add_user(session)
        session.add(Account(user_id=user.id, asset="XU", available=Decimal("-1"), locked=0,
                            updated_at=0))
        session.flush()

    with pytest.raises(StatementError) as info:
        database.transaction(work)
    # refused by Amount while binding, not by the database's CHECK (whose name on MySQL,
    # available_non_negative, would also read "negative")
    assert isinstance(info.value.orig, AmountOutOfRange), info.value
    assert count(database, User) == 0


@pytest.mark.parametrize(
    "value",
    ["0", "0.000000000000000001", "123456789012345678.123456789012345678", "25000", "0.1"],
)
def test_amounts_round_trip_exactly(database: Database, value: str) -> None:
    def work(session):  # type: ignore[no-untyped-def]
        session.add(Candle(market_id="asaxu", time=60, open=Decimal(value), high=Decimal(value),
                           low=Decimal(value), close=Decimal(value), volume=Decimal(value),
                           updated_at=0))

    database.transaction(work)
    with database.read() as s:
        candle = s.scalars(select(Candle)).one()
    assert candle.volume == Decimal(value)
    assert isinstance(candle.volume, Decimal)


def test_amount_ordering_matches_numbers(database: Database) -> None:
    """ORDER BY and comparisons on amounts follow numeric order on both backends."""
    values = ["9", "10", "0.5", "100.25", "2", "0.05"]

    def work(session):  # type: ignore[no-untyped-def]
        for i, v in enumerate(values):
            d = Decimal(v)
            session.add(Candle(market_id="asaxu", time=60 * i, open=d, high=d, low=d, close=d,
                               volume=d, updated_at=0))

    database.transaction(work)
    with database.read() as s:
        ordered = list(s.scalars(select(Candle.close).order_by(Candle.close)))
        above = set(s.scalars(select(Candle.close).where(Candle.close > Decimal("9.5"))))
        top = s.scalar(select(func.max(Candle.high)))
    assert ordered == sorted(Decimal(v) for v in values)
    assert above == {Decimal("10"), Decimal("100.25")}
    assert Decimal(top) == Decimal("100.25")


def test_too_many_decimals_refused() -> None:
    with pytest.raises(AmountOutOfRange):
        Amount().process_bind_param(Decimal("0.0000000000000000001"), _FakeDialect())


class _FakeDialect:
    name = "mysql"


def test_deadlock_is_retried_and_succeeds(mysql_database: Database) -> None:
    """Two transactions lock two rows in opposite order; InnoDB kills one, we run it again."""
    db = mysql_database
    barrier = threading.Barrier(2, timeout=10)
    attempts = {"a": 0, "b": 0}
    errors: list[BaseException] = []

    def locker(name: str, first: str, second: str, fee: str):  # type: ignore[no-untyped-def]
        def work(session):  # type: ignore[no-untyped-def]
            attempts[name] += 1
            session.execute(update(Market).where(Market.id == first).values(maker_fee=fee))
            if attempts[name] == 1:
                barrier.wait()  # both now hold their first row
                time.sleep(0.2)
            session.execute(update(Market).where(Market.id == second).values(maker_fee=fee))

        def run() -> None:
            try:
                db.transaction(work)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        return threading.Thread(target=run)

    threads = [locker("a", "asaxu", "btcvnd", "0.003"), locker("b", "btcvnd", "asaxu", "0.004")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(attempts.values()) == [1, 2]  # exactly one was chosen as the victim and rerun
    with db.read() as s:
        fees = set(s.scalars(select(Market.maker_fee).where(Market.id.in_(["asaxu", "btcvnd"]))))
    assert len(fees) == 1  # the rerun transaction wrote both rows last


def test_an_interrupt_in_the_middle_of_a_raw_read_stays_an_interrupt(
    mysql_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C during `stockex candles rebuild` on MySQL (its reads are raw driver reads) ended
    in a pool traceback and `stockex: database error: Packet sequence number wrong`: the
    ROLLBACK went out on a connection with half an answer still unread."""
    from pymysql.constants import COMMAND

    def work(session):  # type: ignore[no-untyped-def]
        add_user(session)
        driver = session.connection().connection.driver_connection
        driver._execute_command(COMMAND.COM_QUERY, "SELECT 1, 2")
        driver._read_packet()  # the column count; its definitions and the row stay unread
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mysql_database.transaction(work)
    assert "Exception during reset" not in caplog.text
    assert count(mysql_database, User) == 0  # the server rolled it back
    assert mysql_database.transaction(lambda s: s.scalar(text("SELECT 7"))) == 7


def test_non_retryable_error_runs_once(database: Database) -> None:
    calls = 0

    def work(session):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise ValueError("not a database problem")

    with pytest.raises(ValueError):
        database.transaction(work)
    assert calls == 1


# ----------------------------------------------------------------------------- migrations


def test_upgrade_on_empty_mysql_twice_and_no_drift(fresh_mysql_url: str) -> None:
    db = Database(fresh_mysql_url)
    try:
        before, after = upgrade(db)
        assert (before, after) == (None, head_revision())
        again = upgrade(db)
        assert again == (head_revision(), head_revision())
        assert drift(db) == []
        with db.engine.connect() as conn:
            engines = set(conn.execute(text(
                "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            )).scalars())
            charsets = set(conn.execute(text(
                "SELECT CCSA.CHARACTER_SET_NAME FROM information_schema.TABLES T "
                "JOIN information_schema.COLLATION_CHARACTER_SET_APPLICABILITY CCSA "
                "ON CCSA.COLLATION_NAME = T.TABLE_COLLATION WHERE T.TABLE_SCHEMA = DATABASE()"
            )).scalars())
            amount_type = conn.execute(text(
                "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = 'accounts' AND COLUMN_NAME = 'available'"
            )).scalar()
            time_type = conn.execute(text(
                "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = 'candles' AND COLUMN_NAME = 'time'"
            )).scalar()
            book_index = list(conn.execute(text(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = 'orders' AND INDEX_NAME = 'ix_orders_book' "
                "ORDER BY SEQ_IN_INDEX"
            )).scalars())
        assert engines == {"InnoDB"}
        assert charsets == {"utf8mb4"}
        assert amount_type == "decimal(36,18)"
        assert time_type == "bigint"
        assert book_index == ["market_id", "side", "status", "price", "id"]
    finally:
        db.dispose()


def test_upgrade_on_empty_sqlite_twice_and_no_drift(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        assert current_revision(db) is None
        assert upgrade(db) == (None, head_revision())
        assert upgrade(db) == (head_revision(), head_revision())
        assert drift(db) == []
    finally:
        db.dispose()


def test_drift_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The drift check can fail: a column the models have but the database lacks shows up."""
    db = Database(f"sqlite:///{tmp_path / 'y.db'}")
    try:
        upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE users DROP COLUMN email"))
        differences = drift(db)
        assert any("email" in repr(d) for d in differences)
    finally:
        db.dispose()


def test_concurrent_read_modify_write_loses_nothing(database: Database) -> None:
    """Writers serialize: SQLite through BEGIN IMMEDIATE, MySQL through SELECT ... FOR UPDATE.

    Each of 8 threads adds 1 to one amount 15 times, reading it first; any lost update or any
    "database is locked" failure makes the total come out short.
    """
    database.transaction(lambda s: s.add(Candle(
        market_id="asaxu", time=0, open=0, high=0, low=0, close=0, volume=0, updated_at=0)))
    failures: list[BaseException] = []
    retries: list[float] = []

    def add_one(session):  # type: ignore[no-untyped-def]
        row = session.scalars(select(Candle).where(Candle.time == 0).with_for_update()).one()
        row.volume = row.volume + 1

    def worker() -> None:
        try:
            for _ in range(15):
                database.transaction(add_one, sleep=retries.append)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    with database.read() as s:
        assert s.scalar(select(Candle.volume).where(Candle.time == 0)) == Decimal(120)
    if database.dialect == "sqlite":
        # BEGIN IMMEDIATE queues writers up front; a deferred BEGIN would hit "database is
        # locked" when two readers both try to upgrade, and need retries.
        assert retries == []


def test_pooled_connections_are_pinged_once_per_request_scope(mysql_database: Database) -> None:
    """Before each use a pooled connection is pinged (a restart or a hung server is noticed),
    except when the same request scope used it moments ago."""
    from stockex.mysql_pool import end_request_scope, start_request_scope

    db = Database(mysql_database.url, pool_size=1)  # one connection, reused throughout

    def pings_so_far() -> int:  # COM_PING counts as an admin command, per session
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SHOW SESSION STATUS LIKE 'Com_admin_commands'")
            return int(cursor.fetchone()[1])
        finally:
            raw.close()

    try:
        first = pings_so_far()  # a new connection: not pinged
        assert [pings_so_far() - first, pings_so_far() - first] == [1, 2]  # every checkout
        start_request_scope()
        try:
            in_scope = [pings_so_far() - first for _ in range(3)]
        finally:
            end_request_scope()
        assert in_scope == [3, 3, 3]  # pinged when the scope first took it, then not again
        assert pings_so_far() - first == 4  # outside any scope: pinged again
    finally:
        db.dispose()


def test_first_value_reports_an_unreachable_server_as_sqlalchemy_does() -> None:
    """The API turns SQLAlchemy's connection errors into 503; a raw PyMySQL one would be a 500."""
    from sqlalchemy.exc import OperationalError as SAOperationalError

    from stockex.auth import _REVOKED_EXPIRY
    from stockex.testing import free_port

    db = Database(f"mysql+pymysql://nobody:nothing@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(SAOperationalError) as caught:
            db.first_value(_REVOKED_EXPIRY, {"jti": "x"})
        assert caught.value.orig.args[0] == 2003  # can't connect
    finally:
        db.dispose()


def sqlite_error(message: str, code: int) -> Exception:
    """sqlite3's error as SQLite raised it (the module sets sqlite_errorcode on its own)."""
    import sqlite3

    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


def test_sqlite_unavailable_says_what_is_wrong_with_the_file_and_nothing_else(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """A failing disk (I/O error, extended code SQLITE_IOERR_READ) or a corrupt file are the
    operator's; SQLite's errors for a bug or a missing migration are not."""
    from stockex.db import sqlite_unavailable

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    path = str(tmp_path / "x.db")
    assert db.unavailable(sqlite_error("disk I/O error", 266)) == (
        f"disk I/O error on the SQLite database file {path}: check its disk and file system")
    assert db.unavailable(sqlite_error("database disk image is malformed", 11)) == (
        f"the SQLite database file {path} is corrupt (database disk image is malformed): "
        "restore it from a backup")
    for sql in ("SELEC 1", "SELECT * FROM no_such_table"):
        with pytest.raises(OperationalError) as raised:
            with db.read() as s:
                s.execute(text(sql))
        assert db.unavailable(raised.value) is None
        assert sqlite_unavailable(raised.value, path) is None
    with pytest.raises(IntegrityError) as conflict, db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER UNIQUE)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1), (1)")
    assert db.unavailable(conflict.value) is None
    assert Database("mysql+pymysql://u:p@127.0.0.1:1/x").unavailable(
        sqlite_error("disk I/O error", 10)) is None
    db.dispose()
