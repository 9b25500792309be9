"""Request ids, the access log, security headers, CORS, the secret-key check, the body limit.

None of this depends on the database backend, so these run on SQLite only.
"""

from __future__ import annotations

import logging
import re

import pytest
from flask import g

from stockex import alerts
from stockex.api import create_app
from stockex.api.params import json_body
from stockex.config import ConfigError, Settings


@pytest.fixture
def backend() -> str:
    return "sqlite"


HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def test_a_request_id_is_generated_and_returned(client) -> None:  # type: ignore[no-untyped-def]
    first = client.get("/health").headers["X-Request-ID"]
    second = client.get("/health").headers["X-Request-ID"]
    assert HEX_ID.match(first) and HEX_ID.match(second) and first != second


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("req-42.retry:1_a", "req-42.retry:1_a"),
        ("abc\tdef<script>alert(1)</script>", "abcdefscriptalert1script"),
        ("x" * 500, "x" * 64),
    ],
)
def test_a_client_request_id_is_kept_cleaned_and_bounded(client, sent: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/health", headers={"X-Request-ID": sent}).headers["X-Request-ID"] == expected


def test_an_unusable_request_id_is_replaced(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/health", headers={"X-Request-ID": "!!! ???"})
    assert HEX_ID.match(response.headers["X-Request-ID"])


def test_error_responses_carry_the_request_id_too(app, client) -> None:  # type: ignore[no-untyped-def]
    @app.get("/boom")
    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    for method, path, status in (("GET", "/nope", 404), ("POST", "/api/v1/markets", 405),
                                 ("GET", "/boom", 500)):
        response = client.open(path, method=method, headers={"X-Request-ID": "trace-me"})
        assert response.status_code == status
        assert response.headers["X-Request-ID"] == "trace-me"


def test_every_log_line_of_a_request_carries_its_id(app, client, caplog) -> None:  # type: ignore[no-untyped-def]
    @app.get("/chatty")
    def chatty():  # type: ignore[no-untyped-def]
        logging.getLogger("stockex.somewhere").warning("working on it")
        logging.getLogger("sqlalchemy.engine").warning("a library speaks")
        return {"ok": True}

    with caplog.at_level(logging.INFO):
        client.get("/chatty", headers={"X-Request-ID": "rid-1"})
        logging.getLogger("stockex.outside").warning("between requests")
    by_message = {r.getMessage(): r for r in caplog.records}
    assert by_message["working on it"].request_id == "rid-1"  # type: ignore[attr-defined]
    assert by_message["a library speaks"].request_id == "rid-1"  # type: ignore[attr-defined]
    assert by_message["between requests"].request_id == "-"  # type: ignore[attr-defined]


def test_one_access_log_line_per_request(app, client, caplog) -> None:  # type: ignore[no-untyped-def]
    @app.get("/as-user")
    def as_user():  # type: ignore[no-untyped-def]
        g.user_id = 7  # what the authentication layer does
        return {"ok": True}

    with caplog.at_level(logging.INFO, logger="stockex.access"):
        client.get("/health", headers={"X-Request-ID": "a1"})
        client.get("/nope", headers={"X-Request-ID": "a2"})
        client.get("/as-user", headers={"X-Request-ID": "a3"})
    lines = [r.getMessage() for r in caplog.records if r.name == "stockex.access"]
    assert len(lines) == 3
    pattern = r"^GET {path} {status} \d+\.\dms request_id={rid} user_id={user} ip=127\.0\.0\.1$"
    assert re.match(pattern.format(path="/health", status=200, rid="a1", user="-"), lines[0])
    assert re.match(pattern.format(path="/nope", status=404, rid="a2", user="-"), lines[1])
    assert re.match(pattern.format(path="/as-user", status=200, rid="a3", user="7"), lines[2])


def test_the_access_log_shows_the_client_behind_a_proxy(database, make_settings, caplog) -> None:  # type: ignore[no-untyped-def]
    """With api.proxy_hops the ip= field is the forwarded client, not the proxy; without, a
    client's X-Forwarded-For does not change it."""
    behind_proxy = make_settings(database.url, api={"proxy_hops": 1})
    direct = make_settings(database.url)
    forwarded = {"X-Forwarded-For": "1.2.3.4, 203.0.113.5"}
    with caplog.at_level(logging.INFO, logger="stockex.access"):
        for settings in (behind_proxy, direct):
            create_app(settings, db=database).test_client().get(
                "/health", headers=forwarded, environ_base={"REMOTE_ADDR": "10.0.0.254"})
    lines = [r.getMessage() for r in caplog.records if r.name == "stockex.access"]
    assert len(lines) == 2
    assert lines[0].endswith(" ip=203.0.113.5") and lines[1].endswith(" ip=10.0.0.254"), lines


def test_a_forwarded_value_that_is_no_address_is_not_taken(database, make_settings, caplog) -> None:  # type: ignore[no-untyped-def]
    """api.proxy_hops set higher than the proxies in front (or the API reachable around
    them): the value taken is the client's own text. Unless it is an IP address it must not
    become the log's ip= (here it would forge a user_id field), nor a scheme other than
    http/https the request's."""
    app = create_app(make_settings(database.url, api={"proxy_hops": 2}), db=database)
    seen: list[str] = []

    @app.get("/scheme")
    def scheme():  # type: ignore[no-untyped-def]
        from flask import request

        seen.append(request.scheme)
        return {}

    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="stockex.access"):
        client.get("/scheme", environ_base={"REMOTE_ADDR": "10.0.0.254"}, headers={
            "X-Forwarded-For": "1.1.1.1 user_id=1, 10.0.0.9",
            "X-Forwarded-Proto": "javascript, https"})
        client.get("/scheme", environ_base={"REMOTE_ADDR": "10.0.0.254"}, headers={
            "X-Forwarded-For": "2001:db8::7, 10.0.0.9", "X-Forwarded-Proto": "https, http"})
    lines = [r.getMessage() for r in caplog.records if r.name == "stockex.access"]
    assert lines[0].endswith(" ip=10.0.0.254") and "user_id=1" not in lines[0], lines
    assert lines[1].endswith(" ip=2001:db8::7"), lines
    assert seen == ["http", "https"]


def test_hsts_when_the_proxy_says_https(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    """TLS ends at the proxy: X-Forwarded-Proto tells the app, and only from a trusted one."""
    https = {"X-Forwarded-Proto": "https"}
    behind_proxy = create_app(make_settings(database.url, api={"proxy_hops": 1}), db=database)
    response = behind_proxy.test_client().get("/health", headers=https)
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    direct = create_app(make_settings(database.url), db=database)
    assert "Strict-Transport-Security" not in direct.test_client().get(
        "/health", headers=https).headers


def test_a_path_cannot_forge_log_lines(app, client, caplog) -> None:  # type: ignore[no-untyped-def]
    @app.get("/boom/<word>")
    def boom(word: str):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    forged = "2024-01-01 INFO stockex.access [x] GET /admin 200"
    with caplog.at_level(logging.INFO):
        client.get(f"/api/v1/markets/x%0D%0A{forged}/ticker")
        client.get("/boom/a%0Ab%1B[31mc%E2%80%A8d")
        assert alerts.flush(10)  # the 500's alert (log only here) names the path too
    lines = [r.getMessage() for r in caplog.records]
    one_line = [line for line in lines if not line.startswith("ALERT ")]  # alerts: several
    assert not any("\n" in line or "\r" in line or "\x1b" in line or "\u2028" in line
                   for line in one_line)
    assert any(line.startswith(f"GET /api/v1/markets/x\\x0d\\x0a{forged}/ticker 404 ")
               for line in lines)
    assert "unhandled error in GET /boom/a\\x0ab\\x1b[31mc\\u2028d" in lines
    [alert] = [line for line in lines if line.startswith("ALERT ")]
    assert "\n• path: /boom/a\\x0ab\\x1b[31mc\\u2028d\n" in alert


def test_security_headers_on_api_responses(client) -> None:  # type: ignore[no-untyped-def]
    for path in ("/health", "/api/v1/markets", "/nope", "/api/openapi.json"):
        headers = client.get(path).headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "Strict-Transport-Security" not in headers  # plain HTTP


def test_hsts_on_https(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/health", base_url="https://api.example.com")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_swagger_ui_is_found_with_a_trailing_slash_too(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/docs/")
    assert (response.status_code, response.headers["Location"]) == (308, "/api/docs")
    assert b"swagger-ui" in client.get("/api/docs/", follow_redirects=True).data


def test_swagger_ui_gets_a_policy_it_can_run_under(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/docs", follow_redirects=True)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self' 'unsafe-inline'" in csp and "frame-ancestors 'none'" in csp
    html = response.get_data(as_text=True)
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert scripts and all(src.startswith("/api/docs/static/") for src in scripts)
    with client.get(scripts[0]) as static:  # a file response: close it
        assert static.status_code == 200
        assert "script-src 'self'" in static.headers["Content-Security-Policy"]


def test_responses_to_authenticated_requests_are_not_cached(app, client) -> None:  # type: ignore[no-untyped-def]
    @app.get("/whoami")
    def whoami():  # type: ignore[no-untyped-def]
        g.user_id = 3
        return {"id": 3}

    assert "no-store" not in client.get("/api/v1/markets").headers.get("Cache-Control", "")
    response = client.get("/api/v1/markets", headers={"Authorization": "Bearer x"})
    assert response.headers["Cache-Control"] == "no-store"
    assert "Authorization" in response.headers["Vary"]
    assert client.get("/whoami").headers["Cache-Control"] == "no-store"
    # Login and register carry a password and answer with a token or a user (RFC 6749 §5.1),
    # whether they succeed or not.
    for path in ("/api/v1/auth/register", "/api/v1/auth/login"):
        body = {"username": "frank", "password": "password-123"}
        for response in (client.post(path, json=body), client.post(path, json={})):
            assert response.headers["Cache-Control"] == "no-store", (path, response.status)


def test_cors_is_off_unless_configured(client) -> None:  # type: ignore[no-untyped-def]
    origin = {"Origin": "https://evil.example"}
    response = client.get("/api/v1/markets", headers=origin)
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options(
        "/api/v1/markets", headers={**origin, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Methods" not in preflight.headers


def test_cors_for_configured_origins_only(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"cors_origins": ["https://app.example.com"]})
    client = create_app(settings, db=database).test_client()
    good = {"Origin": "https://app.example.com"}
    response = client.get("/api/v1/markets", headers=good)
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]
    preflight = client.options(
        "/api/v1/orders",  # not served on this branch: preflights do not depend on the route
        headers={**good, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["X-Request-ID"]

    other = {"Origin": "https://evil.example"}
    assert "Access-Control-Allow-Origin" not in client.get("/api/v1/markets", headers=other).headers
    refused = client.options(
        "/api/v1/markets", headers={**other, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_cors_any_origin(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, api={"cors_origins": ["*"]})
    client = create_app(settings, db=database).test_client()
    response = client.get("/api/v1/markets", headers={"Origin": "https://anyone.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_placeholder_secret_key_is_refused_outside_development(database) -> None:  # type: ignore[no-untyped-def]
    settings = Settings().replace(database={"url": database.url})
    assert settings.secret_key == "change-me"
    with pytest.raises(ConfigError) as refused:
        create_app(settings, db=database)
    message = str(refused.value)
    assert message.startswith("config: secret_key: ") and "\n" not in message
    assert create_app(settings, db=database, development=True).test_client().get(
        "/health"
    ).status_code == 200
    assert create_app(settings, db=database, testing=True).testing


def test_a_short_secret_key_is_refused_outside_development(database) -> None:  # type: ignore[no-untyped-def]
    settings = Settings().replace(database={"url": database.url}, secret_key="x" * 31)
    with pytest.raises(ConfigError) as refused:
        create_app(settings, db=database)
    assert str(refused.value).startswith(
        "config: secret_key: 31 characters, too short to sign tokens with (HS256 wants at "
        "least 32) is refused outside development")
    assert create_app(settings, db=database, development=True).test_client().get(
        "/health").status_code == 200
    long_enough = settings.replace(secret_key="x" * 32)
    assert create_app(long_enough, db=database).test_client().get("/health").status_code == 200


def test_body_over_the_limit_is_413_json(app, client) -> None:  # type: ignore[no-untyped-def]
    @app.post("/echo")
    def echo():  # type: ignore[no-untyped-def]
        return json_body()

    assert client.post("/echo", json={"a": 1}).get_json() == {"a": 1}
    response = client.post("/echo", data=b'{"a": "' + b"x" * 100_000 + b'"}',
                           content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    # It names the limit (Werkzeug's text: "The data value transmitted exceeds the capacity
    # limit."), and every operation that takes a body documents the answer.
    assert response.get_json()["error"]["message"] == (
        "the request body is larger than 64 KiB (65536 bytes)")
    spec = client.get("/api/openapi.json").get_json()
    with_body = [(method, path) for path, item in spec["paths"].items()
                 for method, operation in item.items() if "requestBody" in operation]
    assert len(with_body) == 5
    for method, path in with_body:
        assert "413" in spec["paths"][path][method]["responses"], (method, path)
    response = client.post("/api/v1/auth/register", data=b"x" * 100_000,
                           content_type="application/json")
    assert response.status_code == 413


def test_a_compressed_body_is_415_naming_the_encoding(app, client) -> None:  # type: ignore[no-untyped-def]
    """A gzip body (``curl --compressed`` does not, but HTTP libraries and proxies can) was
    refused as 400 invalid_json "the request body must be a JSON object" although it was one.
    RFC 9110 §15.5.16: 415, with Accept-Encoding saying what is taken."""
    import gzip

    @app.post("/echo")
    def echo():  # type: ignore[no-untyped-def]
        return json_body()

    for encoding in ("gzip", "deflate", "br", "GZIP"):
        response = client.post("/echo", data=gzip.compress(b'{"a": 1}'),
                               content_type="application/json",
                               headers={"Content-Encoding": encoding})
        assert response.status_code == 415, response.get_json()
        assert response.headers["Accept-Encoding"] == "identity"
        assert response.get_json()["error"] == {
            "code": "unsupported_content_encoding",
            "message": f"Content-Encoding {encoding.lower()!r} is not supported: send the "
                       "request body uncompressed",
            "details": {"content_encoding": encoding.lower()},
        }
    for encoding in ("identity", ""):
        response = client.post("/echo", json={"a": 1}, headers={"Content-Encoding": encoding})
        assert response.get_json() == {"a": 1}
    response = client.post("/api/v1/auth/register", data=gzip.compress(b'{"username": "al"}'),
                           content_type="application/json", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415
    spec = client.get("/api/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                assert "415" in operation["responses"], (method, path)


def test_a_login_over_the_limit_is_413_with_its_rate_limit_on(database, make_settings) -> None:  # type: ignore[no-untyped-def]
    """A rate-limited login reads its body twice (the limit is keyed on the username): the
    second read must answer 413 too, not 400 "must be a JSON object"."""
    limited = create_app(make_settings(database.url, api={"login_rate_limit": "5 per minute"}),
                         db=database).test_client()
    response = limited.post("/api/v1/auth/login", data=b"x" * 100_000,
                            content_type="application/json")
    assert response.status_code == 413, response.get_json()


class _BrokenChunkedBody:
    """What gunicorn hands the app for a body whose chunked coding is malformed
    ("Transfer-Encoding: chunked" then "zz\\r\\n"): reading it raises its parser's error."""

    def read(self, *_args):  # type: ignore[no-untyped-def]
        from gunicorn.http.errors import InvalidChunkSize

        raise InvalidChunkSize(b"zz")

    readline = read


def test_an_unreadable_body_is_400_not_a_500(app, client, caplog) -> None:  # type: ignore[no-untyped-def]
    """A malformed chunked body under gunicorn raised InvalidChunkSize out of the view: 500
    internal_error and a Slack alert, for what is the client's mistake."""
    unhandled = []
    app.extensions["stockex.on_unhandled_error"] = unhandled.append
    for path in ("/api/v1/auth/login", "/api/v1/auth/register"):
        response = client.post(
            path, headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input": _BrokenChunkedBody(),
                               "wsgi.input_terminated": True})
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"] == {
            "code": "invalid_json",
            "message": "the request body could not be read (malformed chunked transfer "
                       "coding, or the connection was cut)",
            "details": {}}
    assert unhandled == []


def test_a_streamed_body_over_the_limit_is_413_not_cut_short(app, client, database,  # type: ignore[no-untyped-def]
                                                             make_settings) -> None:
    """A chunked body (no Content-Length; gunicorn sets wsgi.input_terminated) over 64 KiB
    was read up to the limit and the rest silently dropped (Werkzeug's LimitedStream.readall
    stops at the limit and raises only on a further read): a 70 KB order answered 400
    "unterminated string", and a body whose first 64 KiB happen to be JSON was taken as it."""
    import io

    @app.post("/echo")
    def echo():  # type: ignore[no-untyped-def]
        return json_body()

    def post_streamed(body: bytes, path: str = "/echo", client=client):  # type: ignore[no-untyped-def]
        return client.post(
            path, headers={"Content-Type": "application/json",
                           "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})

    limit = app.config["MAX_CONTENT_LENGTH"]
    exactly = b'{"a": 1}'.ljust(limit)
    assert post_streamed(exactly).get_json() == {"a": 1}
    for body in (exactly + b"x", b'{"a": "' + b"x" * 70_000 + b'"}'):
        response = post_streamed(body)
        assert response.status_code == 413, response.get_json()
        assert response.get_json()["error"]["code"] == "payload_too_large"
    # a rate-limited login reads its body twice (the limit is keyed on the username)
    limited = create_app(make_settings(database.url, api={"login_rate_limit": "5 per minute"}),
                         db=database).test_client()
    login = b'{"username": "a", "password": "password-123"}'.ljust(limit) + b"x"
    response = post_streamed(login, "/api/v1/auth/login", limited)
    assert response.status_code == 413, response.get_json()
