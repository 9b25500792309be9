"""The HTTP API: ``create_app(settings=None)`` builds a Flask app with every blueprint.

Production serves it with gunicorn (``gunicorn 'stockex.api:create_app()'``); tests build
apps with their own settings. Nothing here talks to the database or Redis at import time.

Operations around every request: a request id and an access-log line
(:mod:`stockex.api.request_log`), security headers and CORS (:mod:`stockex.api.security`),
rate limits (:mod:`stockex.api.ratelimits`), and Slack alerts for 500s, an unreachable
database or Redis (:mod:`stockex.api.incidents`). ``create_app`` refuses the placeholder
``secret_key`` unless ``development=True`` (``stockex serve``) or ``testing=True``.

Behind reverse proxies (``api.proxy_hops`` > 0) the app trusts their ``X-Forwarded-For`` and
``X-Forwarded-Proto`` (:func:`trust_proxies`), so that the access log and the login limit see
each client's address, not the proxy's; every server (gunicorn, granian, ``stockex serve``,
the test client) runs the app through it, since it wraps ``app.wsgi_app``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flasgger import Swagger
from flask import Flask, current_app, redirect
from werkzeug.middleware.proxy_fix import ProxyFix

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

from stockex.alerts import notifier_for
from stockex.api.errors import register_error_handlers
from stockex.api.incidents import cache_hooks, install_incident_alerts
from stockex.api.openapi import build_spec
from stockex.api.params import AsciiIntegerConverter
from stockex.api.ratelimits import install_rate_limits
from stockex.api.request_log import install_request_log
from stockex.api.security import check_secret_key, install_security
from stockex.cache import Cache
from stockex.config import Settings, load_settings
from stockex.db import Database
from stockex.logs import configure_logging, register_secrets
from stockex.markets import sync_markets
from stockex.mysql_pool import end_request_scope, start_request_scope
from stockex.redaction import secrets_from_settings

log = logging.getLogger("stockex.api")

OPENAPI_ROUTE = "/api/openapi.json"
DOCS_ROUTE = "/api/docs"
MAX_BODY_BYTES = 64 * 1024


@dataclass
class Services:
    """What request handlers need, built once per app."""

    settings: Settings
    db: Database
    cache: Cache


def services() -> Services:
    return current_app.extensions["stockex"]  # type: ignore[no-any-return]


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    development: bool = False,
    testing: bool = False,
) -> Flask:
    settings = settings or load_settings()
    check_secret_key(settings, development=development or testing)
    if not logging.getLogger().handlers:  # gunicorn: nobody configured logging
        configure_logging()
    register_secrets(secrets_from_settings(settings))
    app = Flask("stockex")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
        SWAGGER={"openapi": "3.0.3"},
        TESTING=testing,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    trust_proxies(app, settings.api.proxy_hops)
    app.url_map.converters["int"] = AsciiIntegerConverter  # before any route is added
    database = db or Database(settings.database.url)
    notifier = notifier_for(settings)
    app.extensions["stockex"] = Services(
        settings=settings, db=database, cache=Cache(settings.redis.url, **cache_hooks(notifier))
    )
    # Order matters: the request id first, so everything after it (CORS preflights, 429s)
    # is logged and answered with it.
    install_request_log(app)
    _install_database_scope(app)
    install_security(app, settings)
    install_rate_limits(app, settings)
    install_incident_alerts(app, notifier)
    register_error_handlers(app)

    from stockex.api.accounts import bp as accounts_bp
    from stockex.api.auth import bp as auth_bp
    from stockex.api.market_data import bp as market_data_bp
    from stockex.api.orders import bp as orders_bp
    from stockex.api.service import bp as service_bp

    app.register_blueprint(service_bp)
    app.register_blueprint(market_data_bp, url_prefix="/api/v1")
    app.register_blueprint(auth_bp, url_prefix="/api/v1")
    app.register_blueprint(accounts_bp, url_prefix="/api/v1")
    app.register_blueprint(orders_bp, url_prefix="/api/v1")
    _register_docs(app, settings)
    # Swagger UI is at /api/docs; a typed (or bookmarked) trailing slash finds it too.
    app.add_url_rule(DOCS_ROUTE + "/", "docs_slash",
                     lambda: redirect(DOCS_ROUTE, code=308), strict_slashes=True)
    _sync_markets_best_effort(database, settings)
    return app


def trust_proxies(app: Flask, hops: int) -> None:
    """Read the client's address and scheme from the ``hops`` proxies in front of the app.

    Werkzeug's ProxyFix takes the ``hops``-th ``X-Forwarded-For`` value from the right, the one
    the outermost trusted proxy appended: addresses a client puts in front of it are ignored,
    and with fewer values than ``hops`` the header is ignored altogether. ``X-Forwarded-Proto``
    tells ``https`` at the proxy from plain HTTP behind it (the HSTS header, any URL built
    with the request's scheme).
    ``X-Forwarded-Host`` is not trusted: nginx does not send it unless told to, so a client's
    would be taken, and proxies pass the ``Host`` on (nginx ``proxy_set_header Host $host``).
    With 0 nothing is wrapped and every forwarding header is the client's to make up.

    What the proxies forwarded is used only when it is an IP address and ``http``/``https``
    (:func:`_forwarded_values_checked`): with ``hops`` set higher than the proxies really in
    front (or the API reachable around them) the value is the client's own text, which must
    not become its rate-limit key or fields of the access-log line (``1.1.1.1 user_id=1``).
    """
    if hops:
        checked = _forwarded_values_checked(app.wsgi_app)
        app.wsgi_app = ProxyFix(checked, x_for=hops, x_proto=hops)  # type: ignore[method-assign]


def _forwarded_values_checked(wsgi_app: WSGIApplication) -> WSGIApplication:
    """Between ProxyFix and the app: a forwarded address or scheme that is not one falls
    back to the connection's own (ProxyFix keeps those in ``werkzeug.proxy_fix.orig``)."""

    def checked(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        original = environ.get("werkzeug.proxy_fix.orig", {})
        try:
            ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
        except ValueError:
            environ["REMOTE_ADDR"] = original.get("REMOTE_ADDR")
        if environ.get("wsgi.url_scheme") not in ("http", "https"):
            environ["wsgi.url_scheme"] = original.get("wsgi.url_scheme", "http")
        return wsgi_app(environ, start_response)

    return checked


def _install_database_scope(app: Flask) -> None:
    """One database request scope per HTTP request (``stockex.mysql_pool``)."""
    app.before_request(start_request_scope)

    @app.teardown_request
    def _end_scope(_exc: BaseException | None) -> None:
        end_request_scope()


def _register_docs(app: Flask, settings: Settings) -> None:
    Swagger(
        app,
        template=build_spec(settings),
        config={
            "openapi": "3.0.3",
            "headers": [],
            "specs": [
                {
                    "endpoint": "openapi",
                    "route": OPENAPI_ROUTE,
                    # The document is written by hand in stockex.api.openapi, not scraped from
                    # docstrings: one place to read, validated by the tests.
                    "rule_filter": lambda rule: False,
                    "model_filter": lambda tag: False,
                }
            ],
            "static_url_path": "/api/docs/static",
            "swagger_ui": True,
            "specs_route": DOCS_ROUTE,
            "title": "stockex API",
        },
    )


def _sync_markets_best_effort(db: Database, settings: Settings) -> None:
    """Keep the markets table equal to the configuration; a down database must not stop
    the API from starting (``/ready`` reports it, and `stockex db upgrade` syncs too)."""
    try:
        sync_markets(db, settings)
    except Exception as exc:  # noqa: BLE001 - start-up goes on; /ready tells the operator
        log.warning("could not sync markets at start-up: %s", exc)
