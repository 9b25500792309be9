"""The API skeleton: service endpoints, Swagger, the OpenAPI document, errors, markets."""

from __future__ import annotations

import json
import logging

import pytest
from openapi_spec_validator import validate

from stockex.api import create_app


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_health_does_no_io(make_settings) -> None:  # type: ignore[no-untyped-def]
    # A database that can never be reached: /health must not care.
    settings = make_settings("mysql+pymysql://u:p@127.0.0.1:1/none")
    client = create_app(settings).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_on_both_backends(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok"}


def test_ready_with_redis(database, redis_url, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(database.url, redis={"url": redis_url})
    response = create_app(settings, db=database).test_client().get("/ready")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok"}


def test_ready_names_what_is_down(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        "mysql+pymysql://u:p@127.0.0.1:1/none", redis={"url": "redis://127.0.0.1:1/0"}
    )
    response = create_app(settings).test_client().get("/ready")
    error = assert_error(response, 503, "not_ready")
    assert "database" in error["message"] and "redis" in error["message"]
    assert error["details"]["checks"]["database"].startswith("unavailable")


def test_markets(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/v1/markets")
    assert response.status_code == 200
    markets = response.get_json()
    assert [m["id"] for m in markets] == ["asaxu", "btcvnd"]
    assert markets[0] == {
        "id": "asaxu", "base": "ASA", "quote": "XU", "price_precision": 0,
        "amount_precision": 3, "min_amount": "0.001", "maker_fee": "0.001", "taker_fee": "0.002",
    }


def test_markets_are_synced_into_the_database(database) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from stockex.models import Market

    with database.read() as s:
        ids = set(s.scalars(select(Market.id)))
    assert ids == {"asaxu", "btcvnd"}


def test_unknown_route_and_method_are_json(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/api/v1/nope"), 404, "not_found")
    error = client.post("/api/v1/markets")
    assert_error(error, 405, "method_not_allowed")
    assert "GET" in error.headers["Allow"]


def test_unexpected_error_hides_internals(app, client) -> None:  # type: ignore[no-untyped-def]
    @app.get("/boom")
    def boom():  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals /etc/passwd")

    response = client.get("/boom")
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert error["message"] == "internal server error"


def test_database_down_is_503_json(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("mysql+pymysql://u:p@127.0.0.1:1/none")
    app = create_app(settings)

    @app.get("/needs-db")
    def needs_db():  # type: ignore[no-untyped-def]
        from stockex.api import services

        services().db.ping()
        return "unreachable"

    assert_error(app.test_client().get("/needs-db"), 503, "database_unavailable")


def test_swagger_ui_is_served(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/docs", follow_redirects=True)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "swagger-ui" in html
    assert "/api/openapi.json" in html


def test_openapi_document_is_valid_and_complete(app, client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    validate(json.loads(json.dumps(spec)))  # raises on any violation of the OpenAPI 3 schema
    assert spec["openapi"].startswith("3.")
    documented = {
        (path, method.upper()) for path, ops in spec["paths"].items() for method in ops
    }
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("flasgger", "static")) or rule.rule.startswith("/api/docs"):
            continue
        if rule.rule == "/api/openapi.json":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        path = __import__("re").sub(r"\{[a-z]+:", "{", path)
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
            served.add((path, method))
    assert served <= documented, f"undocumented routes: {sorted(served - documented)}"
    assert documented <= served, f"documented but not served: {sorted(documented - served)}"


@pytest.mark.parametrize("path", ["/health", "/api/v1/markets", "/api/openapi.json"])
def test_responses_are_json(client, path: str) -> None:  # type: ignore[no-untyped-def]
    assert client.get(path).mimetype == "application/json"


def _resolved(node, spec):  # type: ignore[no-untyped-def]
    """``node`` with every ``#/components/...`` reference replaced by what it names."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _resolved(target, spec)
        return {key: _resolved(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolved(item, spec) for item in node]
    return node


def test_every_request_body_example_is_valid_and_accepted(app, client, settings) -> None:  # type: ignore[no-untyped-def]
    """Swagger UI's "Try it out" starts from each body's example; without one it makes one up
    from the properties (a password "string", too short; an order with both `amount` and
    `quote_amount` and a price of 0.001), which the API then refuses. Each example must
    validate against its schema and be accepted as it stands."""
    from openapi_schema_validator import OAS30Validator

    from stockex import auth

    spec = client.get("/api/openapi.json").get_json()
    examples = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                schema = _resolved(operation["requestBody"], spec)["content"][
                    "application/json"]["schema"]
                assert "example" in schema, f"{method.upper()} {path}: no request example"
                OAS30Validator(schema).validate(schema["example"])
                examples[path] = schema["example"]
    assert set(examples) == {"/api/v1/auth/register", "/api/v1/auth/login",
                             "/api/v1/orders", "/api/v1/admin/deposits",
                             "/api/v1/admin/withdrawals"}

    assert client.post("/api/v1/auth/register",
                       json=examples["/api/v1/auth/register"]).status_code == 201
    login = client.post("/api/v1/auth/login", json=examples["/api/v1/auth/login"])
    assert login.status_code == 200, login.get_json()
    user = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    admin = auth.create_user(app.extensions["stockex"].db, settings, "boss", "password-123",
                             role="admin")
    admin_headers = {"Authorization": f"Bearer {auth.issue_token(settings, admin.id, 'admin')}"}
    for path in ("/api/v1/admin/deposits", "/api/v1/admin/withdrawals",
                 "/api/v1/admin/deposits"):
        response = client.post(path, json=examples[path], headers=admin_headers)
        assert response.status_code == 200, response.get_json()
    order = client.post("/api/v1/orders", json=examples["/api/v1/orders"], headers=user)
    assert order.status_code == 201, order.get_json()


def unusable_sqlite_url(kind: str, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A SQLite database.url an operator can break outside the code, in ways root (who runs
    the tests, and whom file modes do not stop) cannot get around either."""
    if kind == "parent is a file":
        (tmp_path / "plain-file").write_text("x")
        return f"sqlite:///{tmp_path / 'plain-file' / 'stockex.db'}"
    if kind == "directory missing":
        return f"sqlite:///{tmp_path / 'gone' / 'stockex.db'}"
    if kind == "path is a directory":
        (tmp_path / "a-directory").mkdir()
        return f"sqlite:///{tmp_path / 'a-directory'}"
    assert kind == "not a database"
    (tmp_path / "notes.db").write_bytes(b"these are not the pages you are looking for\n" * 200)
    return f"sqlite:///{tmp_path / 'notes.db'}"


@pytest.mark.parametrize("kind", ["parent is a file", "directory missing", "path is a directory",
                                  "not a database"])
def test_an_unusable_sqlite_file_is_503_database_unavailable_saying_what_is_wrong(  # type: ignore[no-untyped-def]
    kind, tmp_path, make_settings
) -> None:
    """As with MySQL down: 503 database_unavailable (not a 500 and an API-error alert), and
    the message names the file and what is wrong with it, as /ready does."""
    url = unusable_sqlite_url(kind, tmp_path)
    path = url.removeprefix("sqlite:///")
    app = create_app(make_settings(url))
    down: list[BaseException] = []
    unhandled: list[BaseException] = []
    app.extensions["stockex.on_database_unavailable"] = down.append
    app.extensions["stockex.on_unhandled_error"] = unhandled.append
    client = app.test_client()
    expected = (f"{path} is not a SQLite database file: check database.url"
                if kind == "not a database" else
                f"cannot open the SQLite database file {path}: its directory must exist and be "
                "writable by this process, and the path must not be a directory")
    ready = assert_error(client.get("/ready"), 503, "not_ready")
    assert ready["details"]["checks"] == {"database": f"unavailable: {expected}"}
    for method, route, body in (
        ("get", "/api/v1/markets/asaxu/depth", None),
        ("get", "/api/v1/markets/asaxu/candles", None),
        ("post", "/api/v1/auth/register", {"username": "alice", "password": "password-123"}),
        ("post", "/api/v1/auth/login", {"username": "alice", "password": "password-123"}),
    ):
        error = assert_error(getattr(client, method)(route, json=body), 503,
                             "database_unavailable")
        assert error["message"] == expected
    assert len(down) == 4 and unhandled == []


def test_a_read_only_sqlite_file_is_503_on_writes_and_serves_reads(  # type: ignore[no-untyped-def]
    tmp_path, make_settings
) -> None:
    """``attempt to write a readonly database`` (the file, its -wal/-shm or directory not
    writable; here opened with mode=ro, which root cannot get around)."""
    from stockex.db import Database
    from stockex.migrate import upgrade

    path = tmp_path / "stockex.db"
    writable = Database(f"sqlite:///{path}")
    upgrade(writable)
    writable.dispose()
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    app = create_app(make_settings(url))
    unhandled: list[BaseException] = []
    app.extensions["stockex.on_unhandled_error"] = unhandled.append
    client = app.test_client()
    assert client.get("/api/v1/markets/asaxu/depth").status_code == 200
    response = client.post("/api/v1/auth/register",
                           json={"username": "alice", "password": "password-123"})
    error = assert_error(response, 503, "database_unavailable")
    assert error["message"] == (
        f"the SQLite database file file:{path} is read-only for this process, which must be "
        "able to write the file, its -wal and -shm files and their directory")
    assert unhandled == []


def test_a_sqlite_file_locked_past_the_busy_timeout_is_503(tmp_path, make_settings, caplog) -> None:  # type: ignore[no-untyped-def]
    """Another process holds the write lock longer than the busy timeout: ``database is
    locked`` after the transaction's retries is a 503 saying so, not a 500."""
    import sqlite3

    from sqlalchemy import event

    from stockex.db import Database
    from stockex.migrate import upgrade

    path = tmp_path / "stockex.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    # The real 30 s would make a slow test: the same error, sooner (runs after db's own).
    event.listen(db.engine, "connect",
                 lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=20"))
    db.engine.dispose()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's long write
    try:
        client = create_app(make_settings(db.url), db=db).test_client()
        with caplog.at_level(logging.INFO, logger="stockex.db"):
            response = client.post("/api/v1/auth/register",
                                   json={"username": "alice", "password": "password-123"})
    finally:
        other.execute("ROLLBACK")
        other.close()
    error = assert_error(response, 503, "database_unavailable")
    assert error["message"].startswith(f"the SQLite database file {path} is locked: ")
    # Not tried again: with the real 30 s busy timeout, 8 tries made the 503 take 4 minutes
    # (gunicorn's worker timeout, 60 s, killed the worker long before).
    assert "retrying transaction" not in caplog.text


def test_a_full_disk_under_sqlite_is_503(tmp_path, make_settings) -> None:  # type: ignore[no-untyped-def]
    """``database or disk is full`` (SQLITE_FULL; here the database's own page limit, which
    raises the same error a full disk does)."""
    from sqlalchemy import event, text

    from stockex.api import services
    from stockex.db import Database
    from stockex.migrate import upgrade

    path = tmp_path / "stockex.db"
    db = Database(f"sqlite:///{path}")
    upgrade(db)
    event.listen(db.engine, "connect",
                 lambda dbapi, _record: dbapi.execute("PRAGMA max_page_count=1"))  # = its size
    db.engine.dispose()
    app = create_app(make_settings(db.url), db=db)

    @app.post("/needs-room")
    def needs_room():  # type: ignore[no-untyped-def]
        services().db.transaction(lambda s: s.execute(
            text("CREATE TABLE filler AS SELECT randomblob(100000) AS b")))
        return "unreachable"

    error = assert_error(app.test_client().post("/needs-room"), 503, "database_unavailable")
    assert error["message"] == f"the disk holding the SQLite database file {path} is full"


def test_an_unusable_sqlite_file_alerts_as_a_database_outage(  # type: ignore[no-untyped-def]
    tmp_path, make_settings, fake_slack
) -> None:
    """The same incident as MySQL down (source ``database``, resolved by /ready), saying what
    is wrong with the file; not an API error."""
    from stockex import alerts

    url = unusable_sqlite_url("directory missing", tmp_path)
    settings = make_settings(url, slack={"token": fake_slack.token,
                                         "base_url": fake_slack.api_base_url})
    client = create_app(settings).test_client()
    assert client.get("/api/v1/markets/asaxu/trades").status_code == 503
    assert alerts.notifier_for(settings).flush(10)
    [message] = fake_slack.messages
    assert "in database" in message.text and "in api" not in message.text
    assert f"• problem: cannot open the SQLite database file {tmp_path}/gone/stockex.db" in \
        message.text
