"""Settings: one YAML file plus ``STOCKEX__SECTION__KEY`` environment overrides.

Where the file comes from: ``$STOCKEX_CONFIG``, else ``./config.yaml``, else the built-in
defaults (the embedded SQLite setup). Every environment variable named
``STOCKEX__<SECTION>__<KEY>`` (or ``STOCKEX__<KEY>`` for a top-level key) overrides one key;
its value is read as YAML, so ``[asaxu, btcvnd]`` is a list and ``5000`` a number.

Everything is validated once, here, before anything starts. A bad setting raises
:class:`ConfigError`, whose message is one line naming the key, e.g.
``config: database.url: not a database URL: 'nonsense'``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from stockex.numbers import fits_amount

ENV_PREFIX = "STOCKEX__"
CONFIG_PATH_ENV = "STOCKEX_CONFIG"
DEFAULT_SECRET_KEY = "change-me"  # noqa: S105 - the placeholder that start-up refuses in production
SUPPORTED_DATABASES = ("sqlite", "mysql")


class ConfigError(ValueError):
    """A setting is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///stockex.db"

    @property
    def dialect(self) -> str:
        return self.url.split(":", 1)[0].split("+", 1)[0]


@dataclass(frozen=True)
class RedisSettings:
    url: str = ""


@dataclass(frozen=True)
class SlackSettings:
    token: str = ""
    webhook_url: str = ""
    channel: str = "#stockex-alerts"
    base_url: str = ""
    cooldown_seconds: int = 300


@dataclass(frozen=True)
class TikiSettings:
    base_url: str = "https://api.tiki.vn"
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class CrawlerSettings:
    markets: tuple[str, ...] = ("asaxu",)
    start: str = "2024-01-01T00:00:00+07:00"
    chunk_minutes: int = 1000
    interval_seconds: int = 60


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 5010
    jwt_ttl_seconds: int = 3600
    # flask-limiter rate strings ("10 per minute", "5/second;100/hour"); empty = no limit.
    login_rate_limit: str = "10 per minute"
    # Register and login together per client IP: each computes a scrypt hash (~120 ms CPU);
    # see stockex.api.ratelimits for the arithmetic.
    password_rate_limit: str = "30 per minute"  # noqa: S105 - a rate, not a password
    order_rate_limit: str = "20 per second"
    # Origins allowed to call the API from a browser ("https://app.example.com" or "*").
    cors_origins: tuple[str, ...] = ()
    # Reverse proxies (nginx, a load balancer) in front of the API whose X-Forwarded-For and
    # X-Forwarded-Proto are trusted; 0 = none, the socket's peer is the client.
    proxy_hops: int = 0


@dataclass(frozen=True)
class MarketSettings:
    id: str
    base: str
    quote: str
    price_precision: int = 0
    amount_precision: int = 3
    min_amount: Decimal = Decimal("0.001")
    maker_fee: Decimal = Decimal("0")
    taker_fee: Decimal = Decimal("0")


def _default_markets() -> tuple[MarketSettings, ...]:
    return (MarketSettings(id="asaxu", base="ASA", quote="XU"),)


@dataclass(frozen=True)
class Settings:
    timezone: str = "Asia/Ho_Chi_Minh"
    secret_key: str = DEFAULT_SECRET_KEY
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)
    tiki: TikiSettings = field(default_factory=TikiSettings)
    crawler: CrawlerSettings = field(default_factory=CrawlerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    markets: tuple[MarketSettings, ...] = field(default_factory=_default_markets)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def crawler_start_epoch(self) -> int:
        return _parse_start(self.crawler.start, self.tz)

    def market(self, market_id: str) -> MarketSettings | None:
        return next((m for m in self.markets if m.id == market_id), None)

    def replace(self, **changes: Any) -> Settings:
        """A copy with top-level fields or ``section={"key": value}`` changes, validated again."""
        raw = to_mapping(self)
        for name, value in changes.items():
            if isinstance(value, Mapping) and isinstance(raw.get(name), dict):
                raw[name].update(value)
            else:
                raw[name] = value
        return settings_from_mapping(raw)


_SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "redis": RedisSettings,
    "slack": SlackSettings,
    "tiki": TikiSettings,
    "crawler": CrawlerSettings,
    "api": ApiSettings,
}


# --------------------------------------------------------------------------- loading


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    sections: Collection[str] | None = None,
) -> Settings:
    """Read the YAML file (see module docstring), apply environment overrides, validate.

    ``sections`` reads only those top-level keys of the file and the environment, the others
    keep their defaults: the alerts read ``slack``, ``redis`` and ``timezone`` alone when the
    whole configuration is invalid (see :func:`stockex.alerts`'s fallback).
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    # An empty STOCKEX_CONFIG (compose's ${STOCKEX_CONFIG:-}) is unset, as in the shell.
    source = path or env.get(CONFIG_PATH_ENV) or None
    if source is None and Path("config.yaml").is_file():
        source = "config.yaml"
    if source:
        raw = _read_yaml(Path(source))
    if sections is not None:
        raw = {key: value for key, value in raw.items() if key in sections}
    for name, value in sorted(env.items()):
        if name.upper().startswith(ENV_PREFIX):
            if sections is not None and (
                name[len(ENV_PREFIX):].split("__", 1)[0].lower() not in sections
            ):
                continue
            _apply_override(raw, name, value)
    return settings_from_mapping(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(CONFIG_PATH_ENV, f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(str(path), f"not UTF-8 text (line {line})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(str(path), f"not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(str(path), "nested too deeply") from None
    except _CONSTRUCTOR_ERRORS as exc:
        raise ConfigError(str(path), f"not valid YAML: {_constructor_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level must be a mapping of sections")
    return data


# What PyYAML's scalar constructors raise besides YAMLError: a date that does not exist
# ("2024-02-30", "2024-01-01 24:00:00"), "!!int abc", "!!bool maybe", "!!timestamp soon".
_CONSTRUCTOR_ERRORS = (ValueError, LookupError, AttributeError)


def _constructor_problem(exc: Exception) -> str:
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)  # "day is out of range for month", "invalid literal for int() ..."
    return "a value does not fit its type"


def _apply_override(raw: dict[str, Any], name: str, value: str) -> None:
    parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
    if not all(parts) or len(parts) > 2:
        raise ConfigError(name, "expected STOCKEX__SECTION__KEY or STOCKEX__KEY")
    # Named after the variable, not the key: a typo here is not in the config file.
    if parts[0] not in {f.name for f in dataclasses.fields(Settings)}:
        raise ConfigError(name, f"unknown key {parts[0]!r}")
    if len(parts) == 2:
        section = _SECTIONS.get(parts[0])
        if section is None:
            raise ConfigError(name, f"{parts[0]!r} is not a section (use {ENV_PREFIX}"
                                    f"{parts[0].upper()})")
        if parts[1] not in {f.name for f in dataclasses.fields(section)}:
            raise ConfigError(name, f"unknown key {parts[0]}.{parts[1]}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
        if parsed is None and value.strip().startswith("#"):
            parsed = value.strip()  # "#stockex-alerts" is a Slack channel, not a YAML comment
    except yaml.YAMLError:
        key = ".".join(parts)
        problem = f"environment value is not valid YAML: {_quoted(key, value)}"
        raise ConfigError(key, problem) from None
    except RecursionError:
        raise ConfigError(".".join(parts), "nested too deeply") from None
    except _CONSTRUCTOR_ERRORS as exc:
        key = ".".join(parts)
        problem = _constructor_problem(exc) if key not in _SECRETS else _quoted(key, value)
        raise ConfigError(key, f"environment value is not valid YAML: {problem}") from None
    if len(parts) == 1:
        raw[parts[0]] = parsed
        return
    section = raw.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(parts[0], "must be a mapping")
    section[parts[1]] = parsed


def settings_from_mapping(raw: Mapping[str, Any]) -> Settings:
    """Build validated :class:`Settings` from a plain mapping (a parsed YAML document)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    for key in raw:
        if key not in known:
            raise ConfigError(str(key), "unknown key")
    values: dict[str, Any] = {}
    if "timezone" in raw:
        values["timezone"] = _validate_timezone(_coerce("timezone", raw["timezone"], str))
    if "secret_key" in raw:
        values["secret_key"] = _coerce("secret_key", raw["secret_key"], str)
    for name, cls in _SECTIONS.items():
        if name in raw:
            values[name] = _build_section(name, cls, raw[name])
    if "markets" in raw:
        values["markets"] = _build_markets(raw["markets"])
    settings = Settings(**values)
    _validate(settings)
    return settings


def to_mapping(settings: Settings) -> dict[str, Any]:
    """The settings as plain YAML-ready data (decimals as strings)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return value

    return copy.deepcopy(plain(settings))


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(name, "must be a mapping")
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        f = fields_by_name.get(key)
        if f is None:
            raise ConfigError(f"{name}.{key}", "unknown key")
        values[key] = _coerce(f"{name}.{key}", value, f.type)
    return cls(**values)


# Keys whose values an error message must not show: they end up in CI and container logs.
# (URLs are shown with their password hidden, see _shown.)
_SECRETS = frozenset({"secret_key", "slack.token", "slack.webhook_url", "database.url",
                      "redis.url"})


def _quoted(key: str, value: Any) -> str:
    from stockex.redaction import REDACTED

    return REDACTED if key in _SECRETS else repr(value)


_TYPE_NAMES = {"str": str, "int": int, "float": float, "tuple[str, ...]": tuple}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check one scalar against its declared type; YAML already gave us typed values."""
    kind = _TYPE_NAMES.get(annotation, annotation) if isinstance(annotation, str) else annotation
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, datetime | date):
            return value.isoformat()  # an unquoted ISO time in YAML, e.g. crawler.start
        if not isinstance(value, str):
            raise ConfigError(
                key, f"expected a string, got {type(value).__name__} {_quoted(key, value)}"
            )
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if kind is tuple:
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(key, f"expected a list of names, got {value!r}")
        return tuple(value)
    raise AssertionError(f"no coercion for {annotation!r}")  # pragma: no cover - programming error


_MARKET_TYPES: dict[str, Any] = {
    "id": str,
    "base": str,
    "quote": str,
    "price_precision": int,
    "amount_precision": int,
    "min_amount": Decimal,
    "maker_fee": Decimal,
    "taker_fee": Decimal,
}
# Matched with fullmatch: "$" would also match before a trailing newline.
_MARKET_ID = re.compile(r"[a-z0-9]{2,32}")
_ASSET = re.compile(r"[A-Z0-9]{1,16}")


def _build_markets(raw: Any) -> tuple[MarketSettings, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("markets", "expected a non-empty list of markets")
    markets = []
    for i, item in enumerate(raw):
        where = f"markets[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(where, "expected a mapping")
        values: dict[str, Any] = {}
        for key, value in item.items():
            kind = _MARKET_TYPES.get(key)
            if kind is None:
                raise ConfigError(f"{where}.{key}", "unknown key")
            if kind is Decimal:
                values[key] = _decimal(f"{where}.{key}", value)
            else:
                values[key] = _coerce(f"{where}.{key}", value, kind)
        for required in ("id", "base", "quote"):
            if required not in values:
                raise ConfigError(f"{where}.{required}", "missing")
        markets.append(MarketSettings(**values))
    return tuple(markets)


def _decimal(key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(key, f"expected a decimal number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(key, f"expected a decimal number, got {value!r}") from None
    if not number.is_finite():
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return number


def _validate_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise ConfigError("timezone", f"unknown timezone {name!r}") from None
    return name


def _parse_start(text: str, tz: ZoneInfo) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


def _validate(s: Settings) -> None:
    """Range and format checks that span a whole section."""
    _validate_database_url(s.database.url)
    for key, url, schemes in (
        ("redis.url", s.redis.url, ("redis", "rediss", "unix")),
        ("slack.webhook_url", s.slack.webhook_url, ("http", "https")),
        ("slack.base_url", s.slack.base_url, ("http", "https")),
        ("tiki.base_url", s.tiki.base_url, ("http", "https")),
    ):
        if url:
            _validate_url(key, url, schemes)
    if not s.tiki.base_url:
        raise ConfigError("tiki.base_url", "must not be empty")
    _positive("slack.cooldown_seconds", s.slack.cooldown_seconds, allow_zero=True)
    if s.slack.token and not s.slack.channel:
        raise ConfigError("slack.channel", "required when slack.token is set")
    _positive("tiki.timeout_seconds", s.tiki.timeout_seconds)
    _positive("crawler.chunk_minutes", s.crawler.chunk_minutes)
    _positive("crawler.interval_seconds", s.crawler.interval_seconds)
    _positive("api.jwt_ttl_seconds", s.api.jwt_ttl_seconds)
    if not s.api.host.strip():  # the socket layer would read "" as every interface
        raise ConfigError("api.host", "must not be empty (0.0.0.0 listens on every interface)")
    if not 0 < s.api.port < 65536:
        raise ConfigError("api.port", f"expected a TCP port 1..65535, got {s.api.port}")
    if not 0 <= s.api.proxy_hops <= MAX_PROXY_HOPS:
        raise ConfigError(
            "api.proxy_hops",
            f"expected the number of proxies in front of the API, 0..{MAX_PROXY_HOPS},"
            f" got {s.api.proxy_hops}",
        )
    for key in ("login_rate_limit", "password_rate_limit", "order_rate_limit"):
        _validate_rate_limit(f"api.{key}", getattr(s.api, key))
    for origin in s.api.cors_origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                "api.cors_origins", f"expected origins like https://app.example.com, got {origin!r}"
            )
    if not s.secret_key:
        raise ConfigError("secret_key", "must not be empty")
    try:
        _parse_start(s.crawler.start, s.tz)
    except ValueError:
        raise ConfigError("crawler.start", f"not an ISO-8601 time: {s.crawler.start!r}") from None
    _validate_markets(s)


MAX_PROXY_HOPS = 10  # more is a typo: no deployment chains that many proxies
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?")


def _validate_rate_limit(key: str, value: str) -> None:
    if not value:
        return
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(key, f"not a rate limit like '10 per minute': {value!r}") from None


def _validate_database_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError("database.url", f"not a database URL: {_shown(url)}") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError("database.url", f"bad port in {_shown(url)}")
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_DATABASES:
        raise ConfigError(
            "database.url", f"unsupported database {backend!r} (use sqlite or mysql+pymysql)"
        )


def _shown(url: str) -> str:
    """The URL quoted for an error message, its password or webhook secret hidden (also
    when it is too malformed for a URL, e.g. without "://")."""
    from stockex.redaction import REDACTED, redact

    return re.sub(r":[^:@/\s]+@", f":{REDACTED}@", redact(repr(url)))


def _validate_url(key: str, url: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(key, f"not a {'/'.join(schemes)} URL: {_shown(url)}")
    try:
        parts.port  # noqa: B018 - reading the port parses it
    except ValueError:
        raise ConfigError(key, f"bad port in {_shown(url)}") from None


MAX_DURATION = 10**9  # every such key is seconds or minutes: 10^9 s is 31 years


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if value > MAX_DURATION:  # beyond, time.sleep and datetime arithmetic overflow
        raise ConfigError(key, f"must be at most {MAX_DURATION}, got {value}")


def _validate_markets(s: Settings) -> None:
    seen: set[str] = set()
    for i, m in enumerate(s.markets):
        where = f"markets[{i}]"
        if not _MARKET_ID.fullmatch(m.id):
            raise ConfigError(f"{where}.id", f"expected 2-32 of [a-z0-9], got {m.id!r}")
        if m.id in seen:
            raise ConfigError(f"{where}.id", f"duplicate market {m.id!r}")
        seen.add(m.id)
        for key in ("base", "quote"):
            if not _ASSET.fullmatch(getattr(m, key)):
                raise ConfigError(f"{where}.{key}", "expected an upper-case asset code like ASA")
        if m.base == m.quote:
            raise ConfigError(f"{where}.quote", "must differ from base")
        for key in ("price_precision", "amount_precision"):
            if not 0 <= getattr(m, key) <= 18:
                raise ConfigError(f"{where}.{key}", "expected 0..18 decimal places")
        if m.price_precision + m.amount_precision > 18:  # a total (price x amount) has their sum
            raise ConfigError(
                f"{where}.amount_precision",
                "price_precision + amount_precision must be at most 18 (the stored decimals)",
            )
        if m.min_amount <= 0:
            raise ConfigError(f"{where}.min_amount", "must be > 0")
        if m.min_amount.as_tuple().exponent < -m.amount_precision:  # type: ignore[operator]
            raise ConfigError(f"{where}.min_amount", "has more decimals than amount_precision")
        if not fits_amount(m.min_amount):
            raise ConfigError(f"{where}.min_amount", "must be below 10^18")
        for key in ("maker_fee", "taker_fee"):
            if not Decimal(0) <= getattr(m, key) < 1:
                raise ConfigError(f"{where}.{key}", "expected a fraction in [0, 1)")
            # The markets table stores it as DECIMAL(36,18): a finer rate stopped `stockex db
            # upgrade` with "database error: 1E-19 has more than 18 decimal places", naming no
            # key, and left the API without that market (404 unknown_market).
            if not fits_amount(getattr(m, key)):
                raise ConfigError(f"{where}.{key}", "has more than 18 decimal places")
    for name in s.crawler.markets:
        if name not in seen:
            raise ConfigError("crawler.markets", f"{name!r} is not one of the configured markets")
