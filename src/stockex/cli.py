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
def candles() -> None:
    """Candle rollup commands."""


@candles.command("rebuild")
@click.option("--market", "markets", multiple=True, help="Market id (default: every market).")
@reports_errors
def candles_rebuild(markets: tuple[str, ...]) -> None:
    """Recompute every candle rollup in the configured timezone (after changing timezone)."""
    settings = settings_from_env()
    from stockex.candles import rebuild_rollups
    from stockex.db import Database
    from stockex.errors import UnknownMarket

    for market_id in markets:
        if settings.market(market_id) is None:
            raise UnknownMarket(market_id)
    database = Database(settings.database.url)
    try:
        for market_id in markets or tuple(m.id for m in settings.markets):
            count = database.transaction(
                lambda s, m=market_id: rebuild_rollups(s, m, settings.timezone)
            )
            click.echo(f"{market_id}: rollups rebuilt from {count} minute(s) "
                       f"in {settings.timezone}")
    finally:
        database.dispose()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="stockex")


if __name__ == "__main__":  # pragma: no cover
    main()
