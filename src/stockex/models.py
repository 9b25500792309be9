"""The schema: SQLAlchemy 2 typed tables with their invariants in the database.

* Times are Unix epoch seconds (UTC) in BIGINT columns.
* Every amount is an exact decimal (:class:`stockex.db.Amount`, ``DECIMAL(36,18)`` on MySQL).
* Unique keys make re-ingestion idempotent (one row per market and minute), CHECK constraints
  make a negative balance impossible even for a buggy caller, and the order book has an index
  in the order the matching engine reads it: (market, side, status, price, id).

The Alembic migrations in ``stockex/migrations`` must describe exactly these tables; a test
runs Alembic's autogenerate comparison and fails on any drift.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from stockex.db import Amount, SignedAmount

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

MYSQL_TABLE_ARGS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

ZERO = Decimal(0)
MAX_ID = 2**63 - 1  # BIGINT: the largest id of any table


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Market(Base):
    """A trading pair from the configuration; synced into the database at start-up.

    Placing an order locks this row (``SELECT ... FOR UPDATE``), which serializes matching
    per market across every API process sharing the database.
    """

    __tablename__ = "markets"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    base: Mapped[str] = mapped_column(String(16))
    quote: Mapped[str] = mapped_column(String(16))
    price_precision: Mapped[int] = mapped_column(Integer)
    amount_precision: Mapped[int] = mapped_column(Integer)
    min_amount: Mapped[Decimal] = mapped_column(Amount)
    maker_fee: Mapped[Decimal] = mapped_column(Amount)
    taker_fee: Mapped[Decimal] = mapped_column(Amount)


class Candle(Base):
    """One crawled one-minute candle; ``time`` is the minute's start."""

    __tablename__ = "candles"
    __table_args__ = (
        CheckConstraint("low <= high", name="low_le_high"),
        MYSQL_TABLE_ARGS,
    )

    market_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("markets.id"), primary_key=True
    )
    time: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    open: Mapped[Decimal] = mapped_column(Amount)
    high: Mapped[Decimal] = mapped_column(Amount)
    low: Mapped[Decimal] = mapped_column(Amount)
    close: Mapped[Decimal] = mapped_column(Amount)
    volume: Mapped[Decimal] = mapped_column(Amount)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class CandleRollup(Base):
    """A pre-aggregated candle of a longer period, kept current as minutes are written."""

    __tablename__ = "candle_rollups"
    __table_args__ = (
        CheckConstraint("low <= high", name="low_le_high"),
        MYSQL_TABLE_ARGS,
    )

    market_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("markets.id"), primary_key=True
    )
    period: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    open: Mapped[Decimal] = mapped_column(Amount)
    high: Mapped[Decimal] = mapped_column(Amount)
    low: Mapped[Decimal] = mapped_column(Amount)
    close: Mapped[Decimal] = mapped_column(Amount)
    volume: Mapped[Decimal] = mapped_column(Amount)


class CandleSeries(Base):
    """Per market: the timezone its rollups are bucketed in, and a revision counter.

    ``revision`` goes up whenever stored minutes change in a bucket that had already settled
    (see :data:`stockex.candles.SETTLE_SECONDS`), so cached candle answers that cover only
    settled buckets can be kept for a long time and still never be stale.
    """

    __tablename__ = "candle_series"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    market_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("markets.id"), primary_key=True
    )
    timezone: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class CrawlRun(Base):
    """One crawl of one market: its window, what it wrote, and how it ended."""

    __tablename__ = "crawl_runs"
    __table_args__ = (
        Index(None, "market_id", "id"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    market_id: Mapped[str] = mapped_column(String(32), ForeignKey("markets.id"))
    started_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    window_from: Mapped[int | None] = mapped_column(BigInteger)
    window_to: Mapped[int | None] = mapped_column(BigInteger)
    rows_written: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # running | success | stopped | failed
    error: Mapped[str | None] = mapped_column(Text)
    gap_minutes: Mapped[int] = mapped_column(Integer, default=0)
    gaps: Mapped[str | None] = mapped_column(Text)  # JSON [[from, to], ...], inclusive minutes
    # The same instants as ISO-8601 in the configured timezone, for operators reading the table.
    started_at_local: Mapped[str | None] = mapped_column(String(32))
    finished_at_local: Mapped[str | None] = mapped_column(String(32))
    window_from_local: Mapped[str | None] = mapped_column(String(32))
    window_to_local: Mapped[str | None] = mapped_column(String(32))


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("username"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    username: Mapped[str] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # user | admin | system
    created_at: Mapped[int] = mapped_column(BigInteger)


class Account(Base):
    """A user's balance of one asset. ``locked`` is reserved by open orders."""

    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("user_id", "asset"),
        CheckConstraint("available >= 0", name="available_non_negative"),
        CheckConstraint("locked >= 0", name="locked_non_negative"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    asset: Mapped[str] = mapped_column(String(16))
    available: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    locked: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class LedgerEntry(Base):
    """One change of one account; the balances are the sums of these rows."""

    __tablename__ = "ledger"
    __table_args__ = (
        Index(None, "account_id", "id"),
        Index(None, "ref_type", "ref_id"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("accounts.id"))
    user_id: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(16))
    delta_available: Mapped[Decimal] = mapped_column(SignedAmount)
    delta_locked: Mapped[Decimal] = mapped_column(SignedAmount)
    reason: Mapped[str] = mapped_column(String(32))
    ref_type: Mapped[str | None] = mapped_column(String(16))
    ref_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Order(Base):
    """A placed order. ``locked`` is what it still reserves from its owner's balance."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("user_id", "client_order_id"),
        Index("ix_orders_book", "market_id", "side", "status", "price", "id"),
        Index(None, "user_id", "id"),
        CheckConstraint("side IN ('buy', 'sell')", name="side"),
        CheckConstraint("type IN ('limit', 'market')", name="type"),
        CheckConstraint("time_in_force IN ('GTC', 'IOC', 'FOK')", name="time_in_force"),
        CheckConstraint("status IN ('open', 'filled', 'cancelled')", name="status"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    market_id: Mapped[str] = mapped_column(String(32), ForeignKey("markets.id"))
    # Case-sensitive, as on Binance: on MySQL a binary collation (the table's default one
    # compares without letter case, so "ABC" would be taken for "abc"); SQLite compares bytes.
    client_order_id: Mapped[str | None] = mapped_column(
        String(64).with_variant(mysql.VARCHAR(64, collation="utf8mb4_bin"), "mysql", "mariadb")
    )
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(6))
    time_in_force: Mapped[str] = mapped_column(String(3))
    price: Mapped[Decimal | None] = mapped_column(Amount)
    amount: Mapped[Decimal | None] = mapped_column(Amount)
    quote_amount: Mapped[Decimal | None] = mapped_column(Amount)
    filled_amount: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    filled_quote: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    fee: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    fee_asset: Mapped[str] = mapped_column(String(16))
    locked: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    status: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


# The bids, best first: price descending and, within a price, oldest first. ``ix_orders_book``
# (price ascending) serves the asks, but read backwards it gives the newest first within a
# price, so a bid-side read sorted every crossing bid (a filesort of the whole bid side for
# a market sell) inside the market's lock.
Index("ix_orders_bids", Order.market_id, Order.side, Order.status, Order.price.desc(), Order.id)


class Trade(Base):
    """One fill between a resting (maker) and an incoming (taker) order, at the maker's price."""

    __tablename__ = "trades"
    __table_args__ = (
        Index(None, "market_id", "id"),
        Index(None, "market_id", "created_at"),
        Index(None, "maker_user_id", "id"),
        Index(None, "taker_user_id", "id"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    market_id: Mapped[str] = mapped_column(String(32), ForeignKey("markets.id"))
    price: Mapped[Decimal] = mapped_column(Amount)
    amount: Mapped[Decimal] = mapped_column(Amount)
    total: Mapped[Decimal] = mapped_column(Amount)
    maker_order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id"))
    taker_order_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("orders.id"))
    maker_user_id: Mapped[int] = mapped_column(BigInteger)
    taker_user_id: Mapped[int] = mapped_column(BigInteger)
    taker_side: Mapped[str] = mapped_column(String(4))
    maker_fee: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    taker_fee: Mapped[Decimal] = mapped_column(Amount, default=ZERO)
    created_at: Mapped[int] = mapped_column(BigInteger)


class RevokedToken(Base):
    """A logged-out JWT, refused until it would have expired anyway."""

    __tablename__ = "revoked_tokens"
    __table_args__ = (
        Index(None, "expires_at"),
        MYSQL_TABLE_ARGS,
    )

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)
