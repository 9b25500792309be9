"""The API skeleton: service endpoints, Swagger, the OpenAPI document, errors, markets."""

from __future__ import annotations

import json

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
