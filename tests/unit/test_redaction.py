"""Credentials never survive :func:`stockex.redaction.redact`."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from stockex.config import settings_from_mapping
from stockex.redaction import REDACTED, redact, redact_mapping, secrets_from_settings

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6MTcwMDAwMDAwMH0"
    ".c2lnbmF0dXJlLXBhcnQtb2YtdGhlLXRva2Vu"
)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("mysql+pymysql://stockex:s3cr3t-pw@db:3306/stockex", "s3cr3t-pw",
         "mysql+pymysql://stockex:***@db:3306/stockex"),
        ("redis://:redispass@cache:6379/0", "redispass", "redis://:***@cache:6379/0"),
        ("url with @ in the password mysql://u:p@ss@w0rd@h/db", "ss@w0rd", "mysql://u:***@h/db"),
        ("GET https://x.test/cb?market=asaxu&token=abc123def&x=1", "abc123def", "market=asaxu"),
        ("https://x.test/?api_key=K3Y-VALUE", "K3Y-VALUE", "https://x.test/?api_key=***"),
        ("Authorization: Bearer opaque-token-value", "opaque-token-value", "Authorization: ***"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz', 'Accept': '*/*'}", "dXNlcjpwYXNz",
         "'Accept': '*/*'"),
        ('{"authorization": "Bearer zzz-yyy-xxx"}', "zzz-yyy-xxx", '"authorization": "***"'),
        ("proxy-authorization=Digest abcdef", "abcdef", "proxy-authorization=***"),
        ("Cookie: session=deadbeefcafe; theme=dark", "deadbeefcafe", "Cookie: ***"),
        ("the header said bearer 0123456789abcdef", "0123456789abcdef", "bearer ***"),
        (f"token {JWT} expired", JWT.split(".")[1], "token *** expired"),
        ("slack xoxb-1234-5678-abcdEFGH rejected", "abcdEFGH", "slack *** rejected"),
        ("https://hooks.slack.com/services/T01ABC/B02DEF/hUnTeR2sEcReT", "hUnTeR2sEcReT",
         "https://hooks.slack.com/services/***"),
        ("login(username='bob', password='hunter 2')", "hunter 2", "username='bob'"),
        ('{"username": "bob", "password": "hunter2"}', "hunter2", '"password": "***"'),
        ("password=hunter2&username=bob", "hunter2", "username=bob"),
        ("STOCKEX__SECRET_KEY=abcdefgh12345", "abcdefgh12345", "STOCKEX__SECRET_KEY=***"),
        ("db_password: pa55word\nnext line", "pa55word", "next line"),
        ("client_secret=zzzz9999", "zzzz9999", "client_secret=***"),
        ("(pymysql.err.IntegrityError) duplicate\n[SQL: INSERT INTO users (name, hash) VALUES "
         "(%s, %s)]\n[parameters: ('bob', '$argon2id$v=19$m=65536$c2FsdA$aGFzaA')]\n(Background)",
         "argon2id", "[parameters: ***]"),
    ],
)
def test_credentials_are_redacted(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out
    assert kept in out
    assert REDACTED in out


def test_ordinary_text_is_left_alone() -> None:
    text = "KeyError: 'asaxu' in GET /api/v1/markets/asaxu/candles?period=60 (token_count 3)"
    assert redact(text) == text
    traceback_line = 'File "/app/src/stockex/crawler.py", line 88, in crawl_market'
    assert redact(traceback_line) == traceback_line


def test_known_secrets_are_removed_wherever_they_appear() -> None:
    out = redact("signing with my-very-long-signing-key failed", ["my-very-long-signing-key"])
    assert out == "signing with *** failed"
    # short configured secrets are left to the patterns, so words are not blanked out
    assert redact("stockex-api is up", ["stockex"]) == "stockex-api is up"


def test_redact_mapping_hides_secret_keys_entirely() -> None:
    values = {
        "Authorization": "Bearer abc",
        "X-Api-Key": "k",
        "new_password": "p",
        "request_id": "r-1",
        "path": "/api/v1/orders?token=zzz",
        "user_id": 7,
    }
    clean = redact_mapping(values)
    assert clean["Authorization"] == clean["X-Api-Key"] == clean["new_password"] == REDACTED
    assert clean["request_id"] == "r-1"
    assert clean["path"] == "/api/v1/orders?token=***"
    assert clean["user_id"] == "7"


def test_redact_never_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert redact(Broken()) == "<unprintable>"
    assert redact(None) == "None"


def test_secrets_from_settings() -> None:
    settings = settings_from_mapping(
        {
            "secret_key": "a-signing-key-long-enough",
            "database": {"url": "mysql+pymysql://u:db%40pass@h/x"},
            "redis": {"url": "redis://:redis-pass@h:6379/0"},
            "slack": {"token": "xoxb-123-abc", "webhook_url": "https://hooks.test/services/x"},
        }
    )
    secrets = secrets_from_settings(settings)
    for expected in ("a-signing-key-long-enough", "db@pass", "redis-pass", "xoxb-123-abc",
                     "https://hooks.test/services/x"):
        assert expected in secrets


PASSWORD_CHARS = string.ascii_letters + string.digits + "!$%^&*()-_+=~.,;@"


@given(password=st.text(PASSWORD_CHARS, min_size=1, max_size=40))
def test_url_passwords_never_survive(password: str) -> None:
    url = f"mysql+pymysql://stockex:{password}@db.internal:3306/stockex?charset=utf8mb4"
    out = redact(f"(2003, \"Can't connect\") while connecting to {url}")
    assert "mysql+pymysql://stockex:***@db.internal:3306/stockex?charset=utf8mb4" in out


@given(token=st.text(string.ascii_letters + string.digits + "-_.", min_size=8, max_size=60))
def test_authorization_headers_never_survive(token: str) -> None:
    templates = ("Authorization: Bearer {}", "headers={{'Authorization': 'Bearer {}'}}",
                 '"authorization":"Bearer {}"')
    # a token that is part of the labels themselves ("Authoriz") would be found in them
    assume(not any(token in t.format("") for t in templates))
    for template in templates:
        assert token not in redact(template.format(token))


def test_the_quick_precheck_lets_every_pattern_look() -> None:
    """redact skips its pattern scans when none of a few clues is in the text; each pattern's
    own minimal match must carry a clue (in any letter case), and a plain access-log line
    none."""
    from stockex.redaction import _may_hold_secrets

    minimal_matches = [
        "[parameters: (1,)]", "a://u:p@h", "?TOKEN=x", "?passwd=x", "?pwd=x", "?secret=x",
        "?key=x", "?sig=x", "?auth=x", "?credential=x", "?code=x", "COOKIE: x", "X-Api-Key: x",
        "Authorization: x", "BEARER abcdefgh", "basic abcdefgh", JWT, "xoxb-1-2",
        "/services/T0/B0/abc", "Session-Id=x", "private_key=x", "credentials: x",
    ]
    for text in minimal_matches:
        assert _may_hold_secrets(text), text
        assert _may_hold_secrets(text.upper()), text
    line = ("2026-01-01 10:00:00,000 INFO stockex.access [4f0c9a] POST /api/v1/orders 201 "
            "3.1ms request_id=4f0c9a user_id=7 ip=10.0.0.5")
    assert not _may_hold_secrets(line)
    assert redact(line) == line


def test_a_long_run_of_dashed_words_costs_linear_time() -> None:
    # Every access-log line is redacted: a client's path "/a-a-a-...-key" made the key=value
    # pattern start after every "-" and rescan the rest, quadratic (8 KB: seconds of CPU).
    text = "GET /" + "a-" * 4000 + "key 404 0.1ms request_id=x"
    started = time.perf_counter()
    assert redact(text) == text
    assert time.perf_counter() - started < 0.5
    assert redact("a --token=def db.password=ghi my-secret: jkl") == (
        "a --token=*** db.password=*** my-secret: ***"
    )
