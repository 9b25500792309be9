"""Settings: file, environment overrides and validation (CONTRACT §2)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from stockex.config import ConfigError, Settings, load_settings, settings_from_mapping


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    s = load_settings(environ={})
    assert s == Settings()
    assert s.database.url == "sqlite:///stockex.db"
    assert s.tiki.base_url == "https://api.tiki.vn"  # the real upstream stays the default
    assert s.timezone == "Asia/Ho_Chi_Minh"
    assert s.crawler.markets == ("asaxu",)
    assert s.markets[0].min_amount == Decimal("0.001")
    assert s.crawler_start_epoch == 1704042000  # 2024-01-01T00:00:00+07:00 = 2023-12-31T17:00Z


def test_file_from_env_var_and_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "api:\n  port: 6000\ncrawler:\n  chunk_minutes: 500\n")
    env = {
        "STOCKEX_CONFIG": str(path),
        "STOCKEX__DATABASE__URL": "mysql+pymysql://u:p@127.0.0.1:3306/stockex",
        "STOCKEX__API__PORT": "7000",
        "stockex__crawler__markets": "[asaxu]",
        "STOCKEX__TIMEZONE": "UTC",
        "STOCKEX__SLACK__TOKEN": "",
    }
    s = load_settings(environ=env)
    assert s.api.port == 7000  # environment wins over the file
    assert s.crawler.chunk_minutes == 500  # file wins over defaults
    assert s.database.url.startswith("mysql+pymysql://")
    assert s.database.dialect == "mysql"
    assert s.crawler.markets == ("asaxu",)
    assert s.timezone == "UTC"
    assert s.slack.token == ""


def test_config_yaml_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "timezone: Europe/Berlin\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).timezone == "Europe/Berlin"


def test_markets_list_override_as_yaml() -> None:
    env = {
        "STOCKEX__MARKETS": (
            "[{id: btcvnd, base: BTC, quote: VND, amount_precision: 4, min_amount: '0.0001'}]"
        ),
        "STOCKEX__CRAWLER__MARKETS": "btcvnd",
    }
    s = load_settings(environ=env, path=None)
    assert [m.id for m in s.markets] == ["btcvnd"]
    assert s.markets[0].min_amount == Decimal("0.0001")
    assert s.crawler.markets == ("btcvnd",)


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"databse": {"url": "x"}}, "databse", "unknown key"),
        ({"database": {"urll": "x"}}, "database.urll", "unknown key"),
        ({"database": {"url": "nonsense"}}, "database.url", "not a database URL"),
        ({"database": {"url": "postgresql://x/y"}}, "database.url", "unsupported"),
        ({"api": {"port": "80"}}, "api.port", "expected an integer"),
        ({"api": {"port": 70000}}, "api.port", "1..65535"),
        ({"api": {"port": True}}, "api.port", "expected an integer"),
        # `stockex serve` listened on every interface ("Running on http://:5010")
        ({"api": {"host": ""}}, "api.host", "must not be empty"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        ({"redis": {"url": "http://x"}}, "redis.url", "not a redis"),
        ({"tiki": {"timeout_seconds": 0}}, "tiki.timeout_seconds", "> 0"),
        ({"crawler": {"start": "yesterday"}}, "crawler.start", "ISO-8601"),
        ({"crawler": {"markets": ["nope"]}}, "crawler.markets", "not one of"),
        ({"crawler": "x"}, "crawler", "mapping"),
        ({"markets": []}, "markets", "non-empty"),
        ({"markets": [{"id": "ab", "base": "A"}]}, "markets[0].quote", "missing"),
        ({"markets": [{"id": "ab", "base": "A", "quote": "B", "fee": 1}]}, "markets[0].fee",
         "unknown key"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU", "min_amount": "x"}]},
         "markets[0].min_amount", "decimal"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU", "taker_fee": "1.5"}]},
         "markets[0].taker_fee", "[0, 1)"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU", "min_amount": "0.0001"}]},
         "markets[0].min_amount", "amount_precision"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU", "maker_fee": "-0.001"}]},
         "markets[0].maker_fee", "[0, 1)"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU", "taker_fee": 1}]},
         "markets[0].taker_fee", "[0, 1)"),
        # what the markets table (DECIMAL(36,18)) cannot store stopped `stockex db upgrade`
        # with a database error naming no key, and the API served without the market
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU",
                       "maker_fee": "0.0000000000000000001"}]},
         "markets[0].maker_fee", "more than 18 decimal places"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU",
                       "taker_fee": "0.1234567890123456789"}]},
         "markets[0].taker_fee", "more than 18 decimal places"),
        ({"markets": [{"id": "asaxu", "base": "ASA", "quote": "XU", "min_amount": "1e18"}]},
         "markets[0].min_amount", "below 10^18"),
        ({"secret_key": ""}, "secret_key", "empty"),
        ({"timezone": "Europe"}, "timezone", "unknown timezone"),  # a directory of zones
        ({"database": {"url": "mysql+pymysql://u:p@h:abc/db"}}, "database.url",
         "not a database URL"),
        ({"database": {"url": "mysql+pymysql://u:p@h:99999/db"}}, "database.url", "port"),
        ({"redis": {"url": "redis://h:abc/0"}}, "redis.url", "port"),
        ({"redis": {"url": "redis://h:99999/0"}}, "redis.url", "port"),
        ({"tiki": {"base_url": "http://h:abc"}}, "tiki.base_url", "port"),
    ],
)
def test_bad_values_name_the_key(raw: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"config: {key}: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(("raw", "key"), [
    ({"database": {"url": "mysql+pymysql://u:s3cret-pw@h:abc/db"}}, "database.url"),
    ({"database": {"url": "mysql+pymysql://u:s3cret-pw@h:99999/db"}}, "database.url"),
    ({"redis": {"url": "redis://:s3cret-pw@h:abc/0"}}, "redis.url"),
    ({"redis": {"url": "rediss//:s3cret-pw@h/0"}}, "redis.url"),
])
def test_bad_urls_are_shown_without_their_password(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw)
    assert info.value.key == key
    assert "s3cret-pw" not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize(("name", "problem"), [
    ("STOCKEX__NOSUCH__KEY", "unknown key 'nosuch'"),
    ("STOCKEX__DATABSE__URL", "unknown key 'databse'"),
    ("STOCKEX__DATABASE__URLL", "unknown key database.urll"),
    ("STOCKEX__TIMEZONE__NAME", "'timezone' is not a section (use STOCKEX__TIMEZONE)"),
])
def test_env_override_with_an_unknown_key_names_the_variable(name: str, problem: str) -> None:
    """The typo is in the environment, not in the config file: the error says where."""
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={name: "1"})
    assert str(refused.value) == f"config: {name}: {problem}"


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path, "api: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, environ={})


def test_replace_revalidates() -> None:
    s = Settings().replace(api={"port": 5999})
    assert s.api.port == 5999
    with pytest.raises(ConfigError, match="api.port"):
        Settings().replace(api={"port": -1})


def test_unquoted_iso_time_is_accepted() -> None:
    """YAML reads an unquoted ISO time as a datetime; a time key takes it as its ISO text."""
    s = load_settings(environ={"STOCKEX__CRAWLER__START": "2024-01-01T00:00:00+07:00"})
    assert s.crawler_start_epoch == 1704042000


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"timezone: Europe/Berlin\nsecret_key: caf\xe9\n")  # Latin-1
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.key == str(path)
    assert "not UTF-8" in str(info.value) and "line 2" in str(info.value)


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    nested = "[" * 2000 + "]" * 2000
    path = write(tmp_path, f"crawler:\n  markets: {nested}\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match="^config: crawler.markets: nested too deeply"):
        load_settings(environ={"STOCKEX__CRAWLER__MARKETS": nested})


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_numbers_must_be_finite(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"STOCKEX__TIKI__TIMEOUT_SECONDS": value})
    assert info.value.key == "tiki.timeout_seconds"
    assert "finite" in str(info.value)


@pytest.mark.parametrize(("name", "value"), [
    ("CRAWLER__INTERVAL_SECONDS", str(10**30)), ("TIKI__TIMEOUT_SECONDS", "1.0e+30"),
    ("API__JWT_TTL_SECONDS", str(10**30)),
    ("CRAWLER__CHUNK_MINUTES", str(10**9 + 1)), ("SLACK__COOLDOWN_SECONDS", str(10**12)),
])
def test_durations_have_an_upper_bound(name: str, value: str) -> None:
    """time.sleep(1e30) raises OverflowError: refused at load instead."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ={f"STOCKEX__{name}": value})
    assert info.value.key == name.lower().replace("__", ".")
    assert "at most 1000000000" in str(info.value)
    load_settings(environ={f"STOCKEX__{name}": str(10**9)})  # the bound itself is fine


@pytest.mark.parametrize(
    ("market", "key"),
    [
        ({"id": "asaxu\n", "base": "ASA", "quote": "XU"}, "markets[0].id"),
        ({"id": "asaxu", "base": "ASA\n", "quote": "XU"}, "markets[0].base"),
        ({"id": "asaxu", "base": "ASA", "quote": "XU\n"}, "markets[0].quote"),
    ],
)
def test_names_with_a_trailing_newline_are_refused(market: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"markets": [market]})
    assert info.value.key == key
    assert "\n" not in str(info.value)  # the newline is shown escaped: still one line


def test_precisions_fit_the_stored_decimals() -> None:
    """A trade's total has price_precision + amount_precision decimals; DECIMAL(36,18) holds 18."""
    market = {"id": "asaxu", "base": "ASA", "quote": "XU", "min_amount": "1"}
    fits = settings_from_mapping({"markets": [{**market, "price_precision": 9,
                                               "amount_precision": 9}]})
    assert fits.markets[0].price_precision + fits.markets[0].amount_precision == 18
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"markets": [market, {**market, "id": "btcvnd",
                                                    "price_precision": 10,
                                                    "amount_precision": 9}]})
    assert info.value.key == "markets[1].amount_precision"
    assert "18" in info.value.problem


def test_an_empty_config_path_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STOCKEX_CONFIG= (empty, as compose's ${STOCKEX_CONFIG:-} gives) falls back to
    ./config.yaml like an unset one; before, it silently ignored ./config.yaml and ran the
    built-in defaults (a `db upgrade` migrated a new ./stockex.db instead of the MySQL)."""
    write(tmp_path, "database:\n  url: mysql+pymysql://u:p@db:3306/stockex\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"STOCKEX_CONFIG": ""})
    assert settings.database.url == "mysql+pymysql://u:p@db:3306/stockex"


@pytest.mark.parametrize(("value", "fragment"), [
    ("2024-02-30", "day is out of range for month"),
    ("2024-01-01 24:00:00", "hour must be in 0..23"),
    ("!!int abc", "invalid literal for int()"),
    ("!!bool maybe", "does not fit its type"),
    ("!!timestamp soon", "does not fit its type"),
])
def test_yaml_values_that_cannot_be_built_name_the_key(
    tmp_path: Path, value: str, fragment: str
) -> None:
    """A YAML date that does not exist, or a tag its value does not fit, raised Python's
    ValueError/KeyError/AttributeError out of yaml.safe_load: a traceback, not one line."""
    with pytest.raises(ConfigError) as from_env:
        load_settings(environ={"STOCKEX__CRAWLER__START": value})
    assert str(from_env.value).startswith("config: crawler.start: environment value is not "
                                          "valid YAML: ")
    assert fragment in str(from_env.value)
    path = write(tmp_path, f"crawler:\n  start: {value}\n")
    with pytest.raises(ConfigError) as from_file:
        load_settings(path, environ={})
    assert str(from_file.value).startswith(f"config: {path}: not valid YAML: ")
    assert fragment in str(from_file.value)


@pytest.mark.parametrize("name", ["STOCKEX__SECRET_KEY", "STOCKEX__SLACK__TOKEN",
                                  "STOCKEX__SLACK__WEBHOOK_URL", "STOCKEX__DATABASE__URL"])
@pytest.mark.parametrize("value", ["@s3cret-value", "`s3cret-value", "s3cret-value: x",
                                   "[s3cret-value]", "!!int s3cret-value"])
def test_errors_about_a_secret_do_not_show_it(name: str, value: str) -> None:
    """A secret that is not valid YAML or not a string (a generated password starting with
    '@' or '%', holding ': ') was quoted in the error line, which lands in CI and container
    logs; every other config error hides secrets (URL passwords, see above)."""
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={name: value})
    assert "s3cret" not in str(refused.value)
    assert "***" in str(refused.value)
    with pytest.raises(ConfigError) as still_shown:  # other keys still quote their value
        load_settings(environ={"STOCKEX__TIMEZONE": value})
    assert "s3cret" in str(still_shown.value)
