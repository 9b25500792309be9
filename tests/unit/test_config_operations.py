"""The operations settings: rate limits and CORS origins."""

from __future__ import annotations

import pytest

from stockex.config import ConfigError, Settings, load_settings, settings_from_mapping


def test_defaults() -> None:
    api = Settings().api
    assert api.login_rate_limit == "10 per minute"
    assert api.password_rate_limit == "30 per minute"  # register + login, per client IP
    assert api.order_rate_limit == "20 per second"
    assert api.cors_origins == ()
    assert api.proxy_hops == 0  # no forwarding header is trusted


@pytest.mark.parametrize(
    "value", ["5/second", "10 per minute; 100 per hour", "1 per 2 seconds", ""]
)
def test_rate_limits_accept_flask_limiter_strings(value: str) -> None:
    assert settings_from_mapping({"api": {"login_rate_limit": value}}).api.login_rate_limit == value


@pytest.mark.parametrize(("key", "value"), [
    ("login_rate_limit", "ten per minute"),
    ("password_rate_limit", "30 per moon"),
    ("order_rate_limit", "20 per fortnight"),
])
def test_bad_rate_limits_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_mapping({"api": {key: value}})
    assert str(error.value).startswith(f"config: api.{key}: not a rate limit")


def test_password_rate_limit_from_the_environment() -> None:
    env = {"STOCKEX__API__PASSWORD_RATE_LIMIT": "5 per minute; 100 per hour"}
    assert load_settings(environ=env).api.password_rate_limit == "5 per minute; 100 per hour"
    off = load_settings(environ={"STOCKEX__API__PASSWORD_RATE_LIMIT": ""})
    assert off.api.password_rate_limit == ""


def test_rate_limit_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="api.order_rate_limit: expected a string"):
        settings_from_mapping({"api": {"order_rate_limit": 20}})


def test_cors_origins() -> None:
    settings = settings_from_mapping(
        {"api": {"cors_origins": ["https://app.example.com", "http://localhost:3000"]}}
    )
    assert settings.api.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings_from_mapping({"api": {"cors_origins": ["*"]}}).api.cors_origins == ("*",)


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/", "ftp://x.y",
                                    "https://app.example.com/path", "https://app.example.com\n"])
def test_bad_cors_origins_name_the_key(origin: str) -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_mapping({"api": {"cors_origins": [origin]}})
    assert str(error.value).startswith("config: api.cors_origins: expected origins like")


def test_cors_origins_from_the_environment() -> None:
    env = {"STOCKEX__API__CORS_ORIGINS": "[https://a.example, https://b.example]"}
    assert load_settings(environ=env).api.cors_origins == ("https://a.example", "https://b.example")
    assert load_settings(environ={"STOCKEX__API__CORS_ORIGINS": ""}).api.cors_origins == ()


def test_proxy_hops() -> None:
    assert settings_from_mapping({"api": {"proxy_hops": 2}}).api.proxy_hops == 2
    assert load_settings(environ={"STOCKEX__API__PROXY_HOPS": "1"}).api.proxy_hops == 1


@pytest.mark.parametrize(("value", "problem"), [
    (-1, "expected the number of proxies in front of the API, 0..10, got -1"),
    (11, "expected the number of proxies in front of the API, 0..10, got 11"),
    ("1", "expected an integer, got '1'"),
    (True, "expected an integer, got True"),
    (1.5, "expected an integer, got 1.5"),
])
def test_bad_proxy_hops_name_the_key(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_mapping({"api": {"proxy_hops": value}})
    assert str(error.value) == f"config: api.proxy_hops: {problem}"


def test_a_slack_channel_from_the_environment_is_not_a_yaml_comment() -> None:
    env = {"STOCKEX__SLACK__TOKEN": "xoxb-1", "STOCKEX__SLACK__CHANNEL": "#stockex-alerts"}
    assert load_settings(environ=env).slack.channel == "#stockex-alerts"


def test_a_token_needs_a_channel() -> None:
    with pytest.raises(ConfigError, match="slack.channel: required when slack.token is set"):
        settings_from_mapping({"slack": {"token": "xoxb-1", "channel": ""}})
