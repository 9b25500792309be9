"""The crawler's reads on a held DBAPI connection fail the way SQLAlchemy's do: driver errors
come out as SQLAlchemy errors, and a connection the server dropped is not pooled again."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from stockex.candles import held_reads
from stockex.db import Database

CANDLES = "SELECT time FROM candles WHERE market_id = {market}"


def test_a_read_error_is_sqlalchemys(database: Database) -> None:
    with held_reads(database) as reads, pytest.raises(DBAPIError) as raised:
        reads.rows("SELECT time FROM no_such_table WHERE market_id = {market}", "asaxu")
    assert "no_such_table" in str(raised.value)
    assert not raised.value.connection_invalidated
    with held_reads(database) as reads:  # the connection went back to the pool and works
        assert reads.rows(CANDLES, "asaxu") == []


def test_a_connection_the_server_dropped_is_invalidated(mysql_database: Database) -> None:
    with held_reads(mysql_database) as reads:
        ((held_id,),) = reads.rows("SELECT CONNECTION_ID() WHERE {market} IS NOT NULL", "x")
        with mysql_database.engine.connect() as other:
            other.exec_driver_sql(f"KILL CONNECTION {int(held_id)}")
        with pytest.raises(OperationalError) as raised:
            reads.rows(CANDLES, "asaxu")
        assert raised.value.connection_invalidated
    with held_reads(mysql_database) as reads:  # a new connection, not the dead one
        ((new_id,),) = reads.rows("SELECT CONNECTION_ID() WHERE {market} IS NOT NULL", "x")
        assert new_id != held_id
        assert reads.rows(CANDLES, "asaxu") == []
