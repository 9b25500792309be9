"""The ``stockex`` command. Each subcommand parses its input, calls one function of stockex,
and turns that function's errors into one line on stderr and a non-zero exit status."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from stockex.config import ConfigError, Settings, load_settings
from stockex.errors import DomainError

EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.echo(f"stockex: {message}", err=True)
    sys.exit(code)


def settings_from_env() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
        raise  # unreachable; keeps type checkers honest


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one stderr line and a non-zero exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc), EXIT_CONFIG)
        except DomainError as exc:
            _fail(f"{exc.code}: {exc.message}")
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            _fail(f"database error: {str(detail).splitlines()[0]}")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """stockex: Tiki-Exchange crawler, market data and trading API.

    Settings come from $STOCKEX_CONFIG, else ./config.yaml, else built-in defaults, and
    STOCKEX__SECTION__KEY environment variables override single keys.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # Alembic narrates every plugin and migration step at INFO; our own lines say enough.
        logging.getLogger("alembic").setLevel(logging.WARNING)


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@reports_errors
def db_upgrade() -> None:
    """Apply pending migrations to database.url and sync the configured markets (idempotent)."""
    settings = settings_from_env()
    from stockex.db import Database
    from stockex.markets import sync_markets
    from stockex.migrate import upgrade

    database = Database(settings.database.url)
    try:
        before, after = upgrade(database)
        changed = sync_markets(database, settings)
    finally:
        database.dispose()
    if before == after:
        click.echo(f"database is up to date at revision {after}; {changed} market(s) synced")
    else:
        click.echo(f"migrated {before or 'empty'} -> {after}; {changed} market(s) synced")


@cli.command()
@click.option("--host", default=None, help="Bind address (default: api.host).")
@click.option("--port", type=int, default=None, help="Port (default: api.port).")
@reports_errors
def serve(host: str | None, port: int | None) -> None:
    """Run the API with the development server (production: gunicorn 'stockex.api:create_app()')."""
    from stockex.api import create_app

    settings = settings_from_env()
    app = create_app(settings)
    app.run(host=host or settings.api.host, port=port or settings.api.port, threaded=True)


@cli.group()
def user() -> None:
    """User accounts."""


@user.command("create")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, required=True,
              help="Read the password from standard input (required; never an argument).")
@click.option("--admin", is_flag=True, help="Give the user the admin role.")
@click.option("--email", default=None, help="An e-mail address.")
@reports_errors
def user_create(name: str, password_stdin: bool, admin: bool, email: str | None) -> None:
    """Create user NAME with a password read from standard input."""
    from stockex.auth import create_user
    from stockex.db import Database

    password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    settings = settings_from_env()
    database = Database(settings.database.url)
    try:
        created = create_user(database, settings, name, password, email=email,
                              role="admin" if admin else "user")
    finally:
        database.dispose()
    click.echo(f"created user {created.username} (id {created.id}, role {created.role})")


def _transfer(kind: str, name: str, asset: str, amount: str) -> None:
    from stockex.db import Database
    from stockex.numbers import to_str
    from stockex.trading import accounts

    settings = settings_from_env()
    database = Database(settings.database.url)
    try:
        use_case = accounts.deposit if kind == "deposit" else accounts.withdraw
        balance = use_case(database, settings, name, asset, amount)
    finally:
        database.dispose()
    click.echo(
        f"{name} {balance.asset}: available {to_str(balance.available)}, "
        f"locked {to_str(balance.locked)}"
    )


@cli.command()
@click.argument("name")
@click.argument("asset")
@click.argument("amount")
@reports_errors
def deposit(name: str, asset: str, amount: str) -> None:
    """Credit AMOUNT of ASSET to user NAME (through the ledger)."""
    _transfer("deposit", name, asset, amount)


@cli.command()
@click.argument("name")
@click.argument("asset")
@click.argument("amount")
@reports_errors
def withdraw(name: str, asset: str, amount: str) -> None:
    """Debit AMOUNT of ASSET from user NAME's available balance (through the ledger)."""
    _transfer("withdraw", name, asset, amount)


@cli.command()
@reports_errors
def reconcile() -> None:
    """Check every ledger and balance invariant; exit 0 only when all hold."""
    from stockex.db import Database
    from stockex.trading.reconcile import reconcile as run_checks

    settings = settings_from_env()
    database = Database(settings.database.url)
    try:
        checks = run_checks(database, settings)
    finally:
        database.dispose()
    for check in checks:
        click.echo(f"{'ok  ' if check.ok else 'FAIL'} {check.name}")
        for problem in check.problems:
            click.echo(f"     {problem}")
    failed = [c.name for c in checks if not c.ok]
    if failed:
        _fail(f"reconcile failed: {', '.join(failed)}")
    click.echo("all invariants hold")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="stockex")


if __name__ == "__main__":  # pragma: no cover
    main()
