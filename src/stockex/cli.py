"""The ``stockex`` command. Each subcommand parses its input, calls one function of stockex,
and turns that function's errors into one line on stderr and a non-zero exit status."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, NoReturn

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from stockex.config import ConfigError, Settings, load_settings
from stockex.db import RUN_UPGRADE, CommitOutcomeUnknown, is_missing_table, sqlite_unavailable
from stockex.errors import DomainError
from stockex.logs import configure_logging, register_secrets
from stockex.redaction import secrets_from_settings

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_USAGE = 2  # as click's usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    alerts = sys.modules.get("stockex.alerts")
    if alerts is not None:  # let queued alerts reach the log first: our line comes last
        alerts.flush(5.0)
    click.echo(f"stockex: {message}", err=True)
    sys.exit(code)


def settings_from_env() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
        raise  # unreachable; keeps type checkers honest
    register_secrets(secrets_from_settings(settings))
    return settings


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
        except CommitOutcomeUnknown as exc:
            _fail(f"database error: {exc.outcome}")
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            hint = f" ({RUN_UPGRADE}, or check database.url)" if is_missing_table(exc) else ""
            problem = _sqlite_unavailable(exc) or str(detail).splitlines()[0]
            _fail(f"database error: {problem}{hint}")

    return wrapper


def _sqlite_unavailable(exc: SQLAlchemyError) -> str | None:
    """What is wrong with database.url's SQLite file when ``exc`` says it cannot be used
    (:func:`stockex.db.sqlite_unavailable`), else None."""
    if sqlite_unavailable(exc, None) is None:
        return None
    url = make_url(load_settings().database.url)  # loaded once already by the command
    return sqlite_unavailable(exc, url.database)


class _UsageError(click.UsageError):
    """A usage error shown as one line, like every other error (CONTRACT §3)."""

    def show(self, file: Any = None) -> None:
        message = " ".join(self.format_message().split()).rstrip(".")
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx else ""
        click.echo(f"stockex: {message}{hint}", file=file, err=True)


class _Group(click.Group):
    """The top-level group: click's usage errors from any subcommand become :class:`_UsageError`."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors():
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:  # click would print a blank line and "Aborted!", exit 1
                _fail("interrupted", EXIT_INTERRUPTED)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # no arguments at all: click shows the help
    except click.UsageError as exc:
        raise _UsageError(exc.format_message(), exc.ctx) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def cli(verbose: bool) -> None:
    """stockex: Tiki-Exchange crawler, market data and trading API.

    Settings come from $STOCKEX_CONFIG, else ./config.yaml, else built-in defaults, and
    STOCKEX__SECTION__KEY environment variables override single keys.
    """
    configure_logging(logging.DEBUG if verbose else logging.INFO, sys.stderr)
    if not verbose:
        # Alembic narrates every plugin and migration step at INFO; our own lines say enough.
        logging.getLogger("alembic").setLevel(logging.WARNING)


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade", short_help="Apply pending migrations, sync the configured markets.")
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


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound as Werkzeug binds its own (raises OSError)."""
    from werkzeug.serving import get_sockaddr, select_address_family

    family = select_address_family(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


@cli.command(short_help="Run the API with the development server.")
@click.option("--host", default=None, help="Bind address (default: api.host).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default: api.port).")
@reports_errors
def serve(host: str | None, port: int | None) -> None:
    """Run the API with the development server (production: gunicorn 'stockex.api:create_app()')."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    from stockex.api import create_app

    class OneAccessLine(WSGIRequestHandler):
        """stockex logs one access line per request itself (stockex.access); Werkzeug's own,
        with terminal colour codes, would be a second one."""

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    settings = settings_from_env()
    host, port = host or settings.api.host, port or settings.api.port
    # Bound here, not by Werkzeug, which prints several lines and exits when the port is taken.
    try:
        listener = _listen(host, port)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    with listener:
        app = create_app(settings, development=True)
        server = make_server(host, port, app, threaded=True, fd=listener.fileno(),
                             request_handler=OneAccessLine)
    server.log_startup()
    server.serve_forever()


@cli.command()
@click.option("--market", "markets", multiple=True, metavar="M",
              help="Market to crawl (repeatable; default: crawler.markets).")
@click.option("--once", is_flag=True, help="One catch-up pass, then exit: 0 on success.")
@click.option("--until", default=None, metavar="ISO",
              help="Last minute to fetch (inclusive): ISO-8601 (no offset: configured "
                   "timezone) or epoch seconds. Without --once the loop ends there.")
@reports_errors
def crawl(markets: tuple[str, ...], once: bool, until: str | None) -> None:
    """Crawl Tiki-Exchange one-minute k-lines into the database.

    Each pass resumes from the newest stored minute. Without --once it runs at every
    crawler.interval_seconds boundary until SIGTERM/Ctrl-C, which finish the chunk in flight
    (exit 0). Prints one JSON summary per market run with --once, which exits 1 when a run
    failed or a signal stopped the pass before it caught up.
    """
    import json
    import threading

    from stockex import crawler
    from stockex.db import Database
    from stockex.errors import UnknownMarket

    settings = settings_from_env()
    chosen = markets or settings.crawler.markets
    if not chosen:  # e.g. STOCKEX__CRAWLER__MARKETS= : the loop would idle for ever
        raise ConfigError("crawler.markets", "empty: nothing to crawl (list a market in it, "
                                             "or pass --market M)")
    for market in chosen:
        if settings.market(market) is None:
            raise UnknownMarket(market)
    until_ts = crawler.parse_time(until, settings.tz) if until else None
    stop = threading.Event()
    restore_signals = crawler.stop_on_signals(stop)
    bars = _ProgressBars() if sys.stderr.isatty() else None
    try:
        if not once:
            crawler.run_forever(settings, markets=chosen, until=until_ts, stop=stop,
                                on_chunk=bars.update if bars else None)
            return
        database = Database(settings.database.url, pool_size=2)
        busy: list[crawler.CrawlInProgress] = []  # held by another crawler: the others run
        try:
            summaries = crawler.crawl_markets(database, settings, chosen, until=until_ts,
                                              stop=stop, on_chunk=bars.update if bars else None,
                                              busy=busy)
        finally:
            database.dispose()
    finally:
        if bars:
            bars.close()
        restore_signals()
    for summary in summaries:
        click.echo(json.dumps(summary.as_dict()))
    # An upstream error names its market already ("asaxu [window]: ..."): once is enough.
    problems = [s.error if (s.error or "").startswith((f"{s.market} ", f"{s.market}:"))
                else f"{s.market}: {s.error}" for s in summaries if not s.ok]
    problems += [f"{exc.code}: {exc.message}" for exc in busy]
    # A pass cut short by SIGTERM/Ctrl-C did not catch up: `crawl --once && next` must stop.
    unfinished = [s.market for s in summaries if s.status == "stopped"]
    unfinished += chosen[len(summaries) + len(busy):]  # not started after the signal
    if unfinished:
        problems.append(f"stopped by a signal before catching up: {', '.join(unfinished)} "
                        "(run again to resume)")
    if problems:
        _fail("; ".join(problems))


class _ProgressBars:
    """One click progress bar per market run on a terminal, instead of per-chunk log lines."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._key: tuple[str, int] | None = None
        logging.getLogger("stockex.crawler.progress").setLevel(logging.WARNING)

    def update(self, chunk: Any) -> None:
        key = (chunk.market, chunk.window_from)
        if key != self._key:
            self.close()
            minutes = (chunk.window_to - chunk.window_from) // 60 + 1
            self._bar = click.progressbar(length=minutes, label=chunk.market, file=sys.stderr)
            self._bar.__enter__()
            self._key = key
        self._bar.update((chunk.chunk_to - chunk.chunk_from) // 60 + 1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
            self._key = None


@cli.command(short_help="Serve a local stand-in for the Tiki-Exchange k-lines.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=click.IntRange(0, 65535), default=5011, show_default=True,
              help="Port (0: any free).")
@click.option("--markets", default="asaxu", show_default=True, help="Comma-separated markets.")
@click.option("--origin", default=None,
              help="First minute with data: epoch seconds or ISO-8601 (no offset: configured "
                   "timezone); default 2024-01-01T00:00:00+07:00.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the price series.")
@click.option("--max-rows", type=int, default=None, help="Cap every answer at N rows.")
@click.option("--error-every", type=int, default=0, help="Answer every N-th request with a 5xx.")
@click.option("--error-rate", type=float, default=0.0, help="Answer this share with a 503.")
@click.option("--rate-limit-every", type=int, default=0,
              help="Answer every N-th request with 429 + Retry-After.")
@click.option("--latency", type=float, default=0.0, help="Seconds added to every answer.")
@click.option("--slow-every", type=int, default=0, help="Delay every N-th answer ...")
@click.option("--slow-seconds", type=float, default=0.0, help="... by this many seconds.")
@click.option("--malformed-ts", type=int, default=None,
              help="Serve this minute broken: high below min(open, close).")
@click.option("--gap", "gaps", multiple=True, metavar="FROM:TO",
              help="Epoch range (inclusive) without trades; repeatable.")
@click.option("--serve-open-minute", is_flag=True, help="Also serve the still-open minute.")
@reports_errors
def sim(host: str, port: int, markets: str, origin: str | None, gaps: tuple[str, ...],
        **faults: Any) -> None:
    """Serve a deterministic stand-in for the Tiki-Exchange k-line endpoint (until Ctrl-C)."""
    from stockex.crawler import parse_time
    from stockex.tiki.simulator import DEFAULT_ORIGIN, run_simulator

    config: dict[str, Any] = dict(faults)
    config["markets"] = tuple(m.strip() for m in markets.split(",") if m.strip())
    try:
        config["origin"] = (parse_time(origin, settings_from_env().tz) if origin
                            else DEFAULT_ORIGIN)
    except DomainError as exc:
        _fail(f"sim: --origin: {exc.message}")
    config["gaps"] = tuple(_gap(g) for g in gaps)
    try:
        if port:  # Werkzeug prints several lines and exits on a taken port: try it first
            _listen(host, port).close()
        run_simulator(host, port, **config)
    except ValueError as exc:  # SimulatorConfig's checks name its fields: say the flags
        _fail("sim: " + re.sub(r"\b(" + "|".join(config) + r")\b",
                               lambda m: "--" + m.group(1).replace("_", "-"), str(exc)))
    except OSError as exc:
        _fail(f"sim: cannot listen on {host}:{port}: {exc.strerror or exc}")


def _gap(text: str) -> tuple[int, int]:
    """``FROM:TO`` of ``--gap``: epoch seconds, FROM <= TO."""
    first, _, last = text.partition(":")
    try:
        gap = int(first), int(last)
    except ValueError:
        _fail(f"sim: --gap must be FROM:TO in epoch seconds, got {text!r}")
    if gap[0] > gap[1]:
        _fail(f"sim: --gap {text!r} ends before it starts")
    return gap


@cli.group()
def candles() -> None:
    """Candle rollup commands."""


@candles.command("rebuild", short_help="Recompute every rollup (after changing timezone).")
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


@cli.group("crawl-runs")
def crawl_runs() -> None:
    """The crawler's run rows (crawl_runs)."""


@crawl_runs.command("prune", short_help="Delete finished crawl runs older than N days.")
@click.option("--older-than-days", type=click.IntRange(min=0), default=90, show_default=True,
              metavar="N", help="Delete runs that started more than N days ago.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              metavar="ROWS",
              help="Rows deleted per transaction.")
@reports_errors
def crawl_runs_prune(older_than_days: int, batch_size: int) -> None:
    """Delete the crawl_runs rows of finished runs that started more than N days ago, in
    batches of short transactions. A market's newest run is always kept (the next run reads
    it), and so is a run still running. Prints how many rows went, per market."""
    from stockex.crawler import local_iso
    from stockex.crawler.prune import prune_older_than

    settings = settings_from_env()
    deleted, started_before = prune_older_than(settings, older_than_days, batch_size=batch_size)
    for market, count in deleted.items():
        click.echo(f"{market}: {count} run row(s) deleted")
    click.echo(f"deleted {sum(deleted.values())} crawl_runs row(s) started before "
               f"{local_iso(started_before, settings.tz)}")


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

    if sys.stdin is None:  # started with stdin closed (`<&-`, some process managers)
        _fail("--password-stdin: standard input is closed")
    try:  # bytes, decoded here: a text stdin may decode with the locale or surrogateescape
        password = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        _fail("--password-stdin: the password is not UTF-8")
    password = password.removesuffix("\n").removesuffix("\r")
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


class _AmountCommand(click.Command):
    """A command whose last argument is an amount: ``-5`` is an amount (refused as one, with
    its own message), not an unknown option; a real unknown option is still refused."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if re.fullmatch(r"-(\d|\.\d)\S*", arg):
                args = [*args[:i], "--", *args[i:]]
                break
        return super().parse_args(ctx, args)


@cli.command(cls=_AmountCommand)
@click.argument("name")
@click.argument("asset")
@click.argument("amount")
@reports_errors
def deposit(name: str, asset: str, amount: str) -> None:
    """Credit AMOUNT of ASSET to user NAME (through the ledger)."""
    _transfer("deposit", name, asset, amount)


@cli.command(cls=_AmountCommand,
             short_help="Debit AMOUNT of ASSET from user NAME (through the ledger).")
@click.argument("name")
@click.argument("asset")
@click.argument("amount")
@reports_errors
def withdraw(name: str, asset: str, amount: str) -> None:
    """Debit AMOUNT of ASSET from user NAME's available balance (through the ledger)."""
    _transfer("withdraw", name, asset, amount)


@cli.command(short_help="Check every ledger and balance invariant (exit 0: all hold).")
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
    args = sys.argv[1:] if argv is None else argv
    cli.main(args=_utf8_arguments(args), prog_name="stockex")


def _utf8_arguments(args: list[str]) -> list[str]:
    """The arguments as UTF-8 text, whatever the locale decoded them with (a C locale without
    coercion leaves 'jürgen' as surrogate escapes). One that is not UTF-8 at all stops here
    (exit 2) rather than as a UnicodeEncodeError traceback where it meets the database."""
    decoded = []
    for arg in args:
        raw = os.fsencode(arg)
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            _fail(f"an argument is not UTF-8 text: {raw!r}", EXIT_USAGE)
    return decoded


if __name__ == "__main__":  # pragma: no cover
    main()
