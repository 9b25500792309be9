"""Balances and the ledger: the only code that changes ``accounts``.

Every change of a balance is a :meth:`LockedBalances.post` of (Δavailable, Δlocked, reason,
reference) on an account locked in the current transaction; :meth:`LockedBalances.write`
then stores the new balances and one ledger row per posting together, in that same
transaction. So the ledger always sums to the balances, and the CHECK constraints on
``accounts`` (available >= 0, locked >= 0) stop even a buggy caller.

Locking: :func:`lock_balances` takes the rows with ``SELECT ... FOR UPDATE`` in one statement,
in the order of the unique key (user_id, asset) — a fixed total order for every transaction
(placements, cancels, deposits, withdrawals), so concurrent transactions never wait for each
other in a circle. Callers that also lock a market lock it *before* any account.

Amounts are Decimals computed in Python from the locked values (the same code on MySQL and on
SQLite, where SQL arithmetic on the stored text would go through floats).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from stockex.batch import Ref, WriteBatch, is_mysql, mysql_cursor
from stockex.config import Settings
from stockex.db import Database
from stockex.errors import USER_GONE, DomainError, InvalidInput, NotFound, Unauthorized
from stockex.models import Account, LedgerEntry, User
from stockex.numbers import MAX_AMOUNT, decimal_places, exact, parse_decimal, to_str

ZERO = Decimal(0)
ACCOUNTS = Account.__table__
LEDGER = LedgerEntry.__table__
USERS = User.__table__
FEE_USERNAME = "fees"
UNUSABLE_PASSWORD = "!system account: no login"  # noqa: S105 - not a password


class InsufficientBalance(DomainError):
    status = 400
    code = "insufficient_balance"


class BalanceInvariantError(RuntimeError):
    """A posting would make a balance negative: a bug in the caller, never user input."""


@dataclass
class AccountState:
    id: int
    user_id: int
    asset: str
    available: Decimal
    locked: Decimal
    changed: bool = False


@dataclass(frozen=True)
class BalanceView:
    asset: str
    available: Decimal
    locked: Decimal


@dataclass
class LockedBalances:
    """Accounts locked ``FOR UPDATE`` in one transaction, and the postings made to them."""

    accounts: dict[tuple[int, str], AccountState]
    postings: list[dict[str, object]] = field(default_factory=list)

    def get(self, user_id: int, asset: str) -> AccountState:
        try:
            return self.accounts[(user_id, asset)]
        except KeyError:
            raise BalanceInvariantError(f"account {user_id}/{asset} is not locked") from None

    def available(self, user_id: int, asset: str) -> Decimal:
        return self.get(user_id, asset).available

    @exact  # a 36-digit balance plus a delta, unrounded (the default context keeps 28 digits)
    def post(
        self,
        user_id: int,
        asset: str,
        d_available: Decimal,
        d_locked: Decimal,
        reason: str,
        ref_type: str | None = None,
        ref_id: int | Ref | None = None,
    ) -> None:
        """Change one balance (in memory until :meth:`write`) and record its ledger row."""
        if not d_available and not d_locked:
            return
        account = self.get(user_id, asset)
        available = account.available + d_available
        locked = account.locked + d_locked
        if available < 0 or locked < 0:
            raise BalanceInvariantError(
                f"{reason} would leave account {account.id} at {available}/{locked}"
            )
        if d_available + d_locked > 0 and available + locked >= MAX_AMOUNT:
            # a credit only: moves between available and locked (locks, cancels) never fail
            raise InvalidInput(
                f"this would take a {asset} balance to 10^18 or beyond, more than the exchange "
                "stores; nothing was done",
                code="invalid_amount", details={"asset": asset, "max_balance": to_str(MAX_AMOUNT)},
            )
        account.available, account.locked, account.changed = available, locked, True
        self.postings.append({
            "account_id": account.id,
            "user_id": user_id,
            "asset": asset,
            "delta_available": d_available,
            "delta_locked": d_locked,
            "reason": reason,
            "ref_type": ref_type,
            "ref_id": ref_id,
        })

    def write(self, target: Session | WriteBatch, now: int | None = None) -> None:
        """Store the changed balances (one UPDATE) and the ledger rows (one INSERT).

        Given a :class:`WriteBatch` the statements join it (the caller flushes); given a
        session they run at once.
        """
        if not self.postings:
            return
        batch = target if isinstance(target, WriteBatch) else WriteBatch(target)
        stamp = int(time.time()) if now is None else now
        changed = [a for a in self.accounts.values() if a.changed]
        batch.update_rows(
            ACCOUNTS,
            {a.id: {"available": a.available, "locked": a.locked} for a in changed},
            {"updated_at": stamp},
        )
        for row in self.postings:
            row["created_at"] = stamp
        batch.insert_many(LEDGER, self.postings)
        if batch is not target:
            batch.flush()
        for account in changed:
            account.changed = False
        self.postings = []


def ensure_accounts(session: Session, user_ids: Iterable[int], assets: Iterable[str]) -> None:
    """Create the missing zero accounts for every (user, asset); existing ones stay as they are.

    Every user must exist: makers have orders and the fee account is created first, so a
    missing one is a caller whose token outlived its user (a reset database) — 401, where the
    insert would have failed on its foreign key (a 500).
    """
    now = int(time.time())
    users = sorted(set(user_ids))
    rows = [
        {"user_id": u, "asset": a, "available": ZERO, "locked": ZERO, "updated_at": now}
        for u in users
        for a in sorted(set(assets))
    ]
    if not rows:
        return
    found = set(session.scalars(select(USERS.c.id).where(USERS.c.id.in_(users))))
    if len(found) < len(users):
        raise Unauthorized(USER_GONE)
    ignore = "OR IGNORE" if session.get_bind().dialect.name == "sqlite" else "IGNORE"
    session.execute(insert(ACCOUNTS).prefix_with(ignore), rows)


# One text column per row on MySQL (see stockex.trading.book: PyMySQL's per-column cost); the
# asset last, so that it is whatever follows the fourth comma.
_LOCK_ACCOUNTS_SQL = (
    "SELECT CONCAT(id, ',', user_id, ',', available, ',', locked, ',', asset) FROM accounts "
    "WHERE user_id IN %s AND asset IN %s ORDER BY user_id, asset FOR UPDATE"
)


def _account(text: str) -> AccountState:
    id_, user_id, available, locked, asset = text.split(",", 4)
    return AccountState(int(id_), int(user_id), asset, Decimal(available), Decimal(locked))


def lock_balances(
    session: Session, user_ids: Iterable[int], assets: Iterable[str]
) -> LockedBalances:
    """Lock the accounts of every (user, asset) — creating missing ones — and read them."""
    users = sorted(set(user_ids))
    wanted = sorted(set(assets))
    mysql = is_mysql(session)
    for attempt in range(2):
        if mysql:  # the hot path: skip building and compiling a statement
            with mysql_cursor(session) as cursor:
                cursor.execute(_LOCK_ACCOUNTS_SQL, (users, wanted))
                states = [_account(row[0]) for row in cursor.fetchall()]
        else:
            states = [AccountState(*row) for row in session.execute(
                select(
                    ACCOUNTS.c.id, ACCOUNTS.c.user_id, ACCOUNTS.c.asset,
                    ACCOUNTS.c.available, ACCOUNTS.c.locked,
                )
                .where(ACCOUNTS.c.user_id.in_(users), ACCOUNTS.c.asset.in_(wanted))
                .order_by(ACCOUNTS.c.user_id, ACCOUNTS.c.asset)
                .with_for_update()
            )]
        found = {(a.user_id, a.asset): a for a in states}
        if len(found) == len(users) * len(wanted) or attempt:
            break
        ensure_accounts(session, users, wanted)
    return LockedBalances(found)


#: The id of the system account that receives fees (none before the first trade).
FEE_USER_QUERY = select(USERS.c.id).where(USERS.c.username == FEE_USERNAME,
                                          USERS.c.role == "system")


def fee_user_id(session: Session) -> int:
    """The id of the system account that receives fees, created on first use."""
    found = session.scalar(FEE_USER_QUERY)
    if found is not None:
        return int(found)
    ignore = "OR IGNORE" if session.get_bind().dialect.name == "sqlite" else "IGNORE"
    session.execute(
        insert(USERS).prefix_with(ignore),
        {"username": FEE_USERNAME, "email": None, "password_hash": UNUSABLE_PASSWORD,
         "role": "system", "created_at": int(time.time())},
    )
    found = session.scalar(FEE_USER_QUERY)
    if found is None:
        raise BalanceInvariantError(f"the username {FEE_USERNAME!r} belongs to a non-system user")
    return int(found)


# --------------------------------------------------------------------------- use cases


def parse_amount(value: object, field_name: str = "amount") -> Decimal:
    """A positive decimal with at most 18 places; 400 ``invalid_<field>`` otherwise."""
    number = parse_decimal(value)
    if number is None or number <= 0 or decimal_places(number) > 18 or number >= MAX_AMOUNT:
        raise InvalidInput(
            f"{field_name} must be below 10^18" if number is not None and number >= MAX_AMOUNT
            else f"{field_name} must be a positive decimal string with at most 18 decimal places",
            code=f"invalid_{field_name}", details={field_name: value},
        )
    return number


def all_assets(settings: Settings) -> list[str]:
    """Every asset of every configured market, sorted."""
    return sorted({a for m in settings.markets for a in (m.base, m.quote)})


def _asset(settings: Settings, asset: object) -> str:
    assets = all_assets(settings)
    if not isinstance(asset, str) or asset not in assets:
        raise InvalidInput(
            f"asset must be one of {', '.join(assets)}",
            code="unknown_asset", details={"asset": asset},
        )
    return asset


def _user_id(session: Session, username: object) -> int:
    found = None
    if isinstance(username, str):
        found = session.execute(
            select(USERS.c.id, USERS.c.username).where(USERS.c.username == username)
        ).first()
    # MySQL's collation ignores case and trailing blanks: only the exact name is the user.
    if found is None or found.username != username:
        raise NotFound(f"no user named {username!r}", code="unknown_user")
    return int(found.id)


def deposit(db: Database, settings: Settings, username: object, asset: object,
            amount: object) -> BalanceView:
    """Credit ``amount`` of ``asset`` to a user's available balance; returns the new balance."""
    return _transfer(db, settings, username, asset, amount, "deposit")


def withdraw(db: Database, settings: Settings, username: object, asset: object,
             amount: object) -> BalanceView:
    """Debit a user's available balance; 400 ``insufficient_balance`` if it is not there."""
    return _transfer(db, settings, username, asset, amount, "withdrawal")


def _transfer(db: Database, settings: Settings, username: object, asset: object,
              amount: object, reason: str) -> BalanceView:
    code = _asset(settings, asset)
    quantity = parse_amount(amount)

    @exact
    def work(session: Session) -> BalanceView:
        user_id = _user_id(session, username)
        balances = lock_balances(session, [user_id], [code])
        if reason == "withdrawal":
            if balances.available(user_id, code) < quantity:
                available = to_str(balances.available(user_id, code))
                raise InsufficientBalance(
                    f"only {available} {code} is available",
                    details={"asset": code, "available": available},
                )
            balances.post(user_id, code, -quantity, ZERO, reason)
        else:
            balances.post(user_id, code, quantity, ZERO, reason)
        account = balances.get(user_id, code)
        view = BalanceView(code, account.available, account.locked)
        balances.write(session)
        return view

    return db.transaction(work)


def balances_of(db: Database, settings: Settings, user_id: int) -> list[BalanceView]:
    """Every asset of every configured market (zero where the user has no account yet)."""
    assets = all_assets(settings)
    with db.read() as session:
        rows = session.execute(
            select(ACCOUNTS.c.asset, ACCOUNTS.c.available, ACCOUNTS.c.locked).where(
                ACCOUNTS.c.user_id == user_id
            )
        ).all()
        if not rows and session.get(User, user_id) is None:
            raise Unauthorized(USER_GONE)
    found = {r.asset: BalanceView(r.asset, r.available, r.locked) for r in rows}
    return [found.get(a, BalanceView(a, ZERO, ZERO)) for a in assets]
