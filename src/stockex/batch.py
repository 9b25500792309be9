"""The writes of one transaction, sent to MySQL in one round trip.

Used by order placement and by the crawler's chunks. A placement holds its market's lock
from the first statement to the commit, so every round trip to the database inside it lowers
the market's throughput. :class:`WriteBatch` collects the inserts and updates of a
transaction and, on MySQL, sends them as one multi-statement query: later statements refer
to ids of rows inserted earlier in the batch through session variables (``SET @stockex_id0 =
LAST_INSERT_ID()``), and the caller gets each id from the answer to its INSERT (the OK
packet carries it), without a query of its own. On SQLite (in-process, no round trips) each
write simply runs at once through SQLAlchemy.

Values are escaped by the driver (``pymysql``'s ``escape``), never pasted in as text; table
and column names come from :mod:`stockex.models`. MySQL stops a multi-statement query at the
first failing statement, and the caller's transaction then rolls everything back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, case, insert, literal, update
from sqlalchemy.orm import Session

from stockex.db import as_sqlalchemy_error
from stockex.mysql_pool import note_committed


class Ref:
    """The id of a row inserted earlier in the batch; ``value`` is known after ``flush``."""

    def __init__(self, variable: str) -> None:
        self.variable = variable
        self.value: int | None = None

    def __int__(self) -> int:
        if self.value is None:
            raise RuntimeError("the batch has not been flushed yet")
        return self.value


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, Ref) else value


def _columns(table: Table, names: Iterable[str]) -> list[str]:
    """The names, each checked to be a column of ``table`` (they end up in SQL text)."""
    found = list(names)
    for name in found:
        if name not in table.c:
            raise ValueError(f"{table.name} has no column {name!r}")
    return found


def is_mysql(session: Session) -> bool:
    return session.get_bind().dialect.name == "mysql"


@contextmanager
def mysql_cursor(session: Session) -> Iterator[Any]:
    """A raw PyMySQL cursor on the session's connection (inside its transaction).

    Driver errors come out as SQLAlchemy's (``IntegrityError``, ``OperationalError``, ...),
    exactly as from ``session.execute`` (:func:`stockex.db.as_sqlalchemy_error`), so that
    deadlocks are retried by the transaction helper, duplicate keys are recognized and a lost
    server answers 503.
    """
    import pymysql

    connection = session.connection().connection
    cursor = connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except pymysql.err.Error as exc:
        raise as_sqlalchemy_error(
            exc, connection, session.get_bind().dialect, getattr(cursor, "_executed", None)
        ) from exc
    finally:
        cursor.close()


class WriteBatch:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.mysql = is_mysql(session)
        self._statements: list[str] = []
        self._ref_count = 0  # session variables named so far (unique across flushes)
        self._inserted: dict[int, Ref] = {}  # statement index -> the ref its id goes to
        self._escape = (
            session.connection().connection.driver_connection.escape  # type: ignore[union-attr]
            if self.mysql else None
        )

    # ----------------------------------------------------------------- building

    def _literal(self, value: Any) -> str:
        kind = type(value)
        if kind is Decimal:  # the common cases first, rendered as the driver would
            return format(value, "f")
        if kind is int:
            return str(value)
        if kind is Ref:
            return str(value.variable)
        assert self._escape is not None  # noqa: S101 - only called on MySQL
        return str(self._escape(value))

    @staticmethod
    def _resolved(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: _plain(v) for k, v in row.items()}

    def insert(self, table: Table, row: Mapping[str, Any]) -> Ref:
        """Insert one row; returns a reference to its id."""
        _columns(table, row)
        ref = Ref(f"@stockex_id{self._ref_count}")
        self._ref_count += 1
        if not self.mysql:
            result = self.session.execute(insert(table).values(self._resolved(row)))
            ref.value = int(result.inserted_primary_key[0])
            return ref
        self._inserted[len(self._statements)] = ref
        self._statements.append(
            f"INSERT INTO {table.name} ({', '.join(_columns(table, row))}) "  # noqa: S608
            f"VALUES ({', '.join(self._literal(v) for v in row.values())})"
        )
        self._statements.append(f"SET {ref.variable} = LAST_INSERT_ID()")
        return ref

    def insert_many(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows with the same columns (ids not needed)."""
        if not rows:
            return
        if not self.mysql:
            self.session.execute(insert(table), [self._resolved(r) for r in rows])
            return
        columns = _columns(table, rows[0])
        values = ", ".join(
            f"({', '.join(self._literal(r[c]) for c in columns)})" for r in rows
        )
        self._statements.append(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {values}"  # noqa: S608
        )

    def update(self, table: Table, row_id: int | Ref, values: Mapping[str, Any]) -> None:
        """``UPDATE table SET ... WHERE id = row_id``."""
        if not self.mysql:
            self.session.execute(
                update(table).where(table.c.id == _plain(row_id)).values(self._resolved(values))
            )
            return
        assignments = ", ".join(
            f"{k} = {self._literal(values[k])}" for k in _columns(table, values)
        )
        self._statements.append(
            f"UPDATE {table.name} SET {assignments} WHERE id = {self._literal(row_id)}"  # noqa: S608
        )

    def update_rows(self, table: Table, rows: Mapping[Any, Mapping[str, Any]],
                    common: Mapping[str, Any] | None = None) -> None:
        """Update several rows by id in ONE statement (``SET col = CASE id WHEN ...``).

        Every row must set the same columns; ``common`` values go to all of them.
        """
        if not rows:
            return
        common = common or {}
        ids = list(rows)
        columns = _columns(table, rows[ids[0]])
        _columns(table, common)
        if not self.mysql:
            plain = [_plain(i) for i in ids]
            values: dict[str, Any] = {
                c: case(
                    {_plain(i): literal(_plain(rows[i][c]), table.c[c].type) for i in ids},
                    value=table.c.id,
                )
                for c in columns
            }
            values.update(self._resolved(common))
            self.session.execute(update(table).where(table.c.id.in_(plain)).values(values))
            return
        assignments = [
            f"{c} = CASE id "
            + " ".join(f"WHEN {self._literal(i)} THEN {self._literal(rows[i][c])}" for i in ids)
            + " END"
            for c in columns
        ] + [f"{c} = {self._literal(v)}" for c, v in common.items()]
        self._statements.append(
            f"UPDATE {table.name} SET {', '.join(assignments)} "  # noqa: S608
            f"WHERE id IN ({', '.join(self._literal(i) for i in ids)})"
        )

    def statement(self, sql: str) -> None:
        """Add a complete MySQL statement built by the caller from identifiers of
        :mod:`stockex.models` and driver-escaped literals (e.g. those of
        :func:`stockex.db.upsert_rows`). MySQL only."""
        if not self.mysql:
            raise RuntimeError("raw statements are for MySQL batches")
        self._statements.append(sql)

    def literal(self, value: Any) -> str:
        """``value`` as a MySQL literal, escaped by the driver. MySQL only."""
        if not self.mysql:
            raise RuntimeError("literals are for MySQL batches")
        return self._literal(value)

    # ----------------------------------------------------------------- sending

    def flush(self, *, commit: bool = False) -> None:
        """Send what was collected (MySQL: one round trip) and fill in every :class:`Ref`.

        ``commit=True`` is for the last database work of a :meth:`Database.transaction`: on
        MySQL the COMMIT then goes in the same round trip, after the writes (a failing write
        stops the query before it, and the helper rolls back as usual), and the helper sends
        no COMMIT of its own; the locks are released one round trip earlier. Once it returns
        the transaction is committed: whatever ``work`` still does afterwards (building its
        result) can no longer roll it back, so it must not do anything that can fail. On
        SQLite the helper commits as usual.
        """
        if not self.mysql or not (self._statements or commit):
            self._statements = []
            return
        statements, inserted = self._statements, self._inserted
        if commit:
            statements.append("COMMIT")
        self._statements, self._inserted = [], {}
        with mysql_cursor(self.session) as cursor:
            # Each statement's answer comes in order; an INSERT's OK packet carries the id
            # it generated (what LAST_INSERT_ID() returns), read here for its Ref.
            cursor.execute(";\n".join(statements))
            index = 0
            while True:
                ref = inserted.get(index)
                if ref is not None:
                    ref.value = int(cursor.lastrowid)
                index += 1
                if not cursor.nextset():
                    break
        if commit:
            note_committed(self.session)
        if inserted and index != len(statements):  # pragma: no cover - one answer each
            raise RuntimeError(f"{len(statements)} statements sent, {index} answered")
