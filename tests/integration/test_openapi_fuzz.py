"""schemathesis against ``/api/openapi.json`` of the app, in process (issue 5 acceptance 5).

Every operation the document describes is fuzzed — routes added later are picked up without
touching this file — with valid and invalid inputs, a bounded, deterministic number of
examples each, on both database backends. A failure is any 5xx, or a status code, content
type, header or body that the document does not describe for that operation.

Authentication: when the document has ``/api/v1/auth/register`` and ``/api/v1/auth/login`` and
an operation requires ``bearerAuth``, the call carries the token of a user registered for the
test (a fresh login for ``/auth/logout``, which revokes its token). While those routes do not
exist this is a no-op.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stockex.api import create_app
from stockex.api.openapi import build_spec
from stockex.config import Settings

MAX_EXAMPLES = 25
REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
FUZZ_PASSWORD = "Fuzz-pass-0123456789!"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head"}

# Collected from the same document the app serves, so new routes are fuzzed automatically.
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in build_spec(Settings())["paths"].items()
    for method in item
    if method in HTTP_METHODS
)


@pytest.fixture
def fuzzed_app(database, make_settings):  # type: ignore[no-untyped-def]
    # Limits far above what the fuzzer sends, so that it reaches the code behind them.
    settings = make_settings(
        database.url,
        api={"login_rate_limit": "100000 per minute", "password_rate_limit": "100000 per minute",
             "order_rate_limit": "100000 per second"},
    )
    return create_app(settings, db=database)


class Tokens:
    """Bearer tokens of one fuzz user, registered and logged in through the API itself."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()
        spec = self.client.get("/api/openapi.json").get_json()
        self.global_security = spec.get("security", [])
        self.username = f"fuzz_{uuid.uuid4().hex[:12]}"
        self._token: str | None = None

    def _login(self) -> str:
        response = self.client.post(
            LOGIN, json={"username": self.username, "password": FUZZ_PASSWORD}
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return str(response.get_json()["access_token"])

    def headers_for(self, operation: Any) -> dict[str, str]:
        security = operation.definition.raw.get("security", self.global_security)
        if not any("bearerAuth" in requirement for requirement in security):
            return {}
        if self._token is None:
            registered = self.client.post(
                REGISTER, json={"username": self.username, "password": FUZZ_PASSWORD}
            )
            assert registered.status_code == 201, registered.get_data(as_text=True)
            self._token = self._login()
        token = self._login() if operation.path == LOGOUT else self._token
        return {"Authorization": f"Bearer {token}"}


def fuzz_operation(app: Any, method: str, path: str, mode: GenerationMode) -> None:
    """Run schemathesis on one operation; raises on the first non-conforming response."""
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operation = schema[path][method]
    tokens = Tokens(app)

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples on every run: no flaky CI
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):  # type: ignore[no-untyped-def]
        case.call_and_validate(headers=tokens.headers_for(operation), checks=CHECKS)

    fuzz()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_every_documented_operation_conforms(  # type: ignore[no-untyped-def]
    fuzzed_app, method: str, path: str, mode: GenerationMode
) -> None:
    try:
        fuzz_operation(fuzzed_app, method, path, mode)
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE and not constrained_inputs(method, path):
            pytest.skip(f"{method} {path} takes no input that could be made invalid")
        raise


def constrained_inputs(method: str, path: str) -> list[str]:
    """The inputs of an operation that the document constrains (a body, or a parameter
    beyond "any string"): what negative fuzzing could make invalid. Only an operation without
    any may skip it; any other must not pass for fuzzed when no invalid case was made."""
    spec = build_spec(Settings())
    operation = spec["paths"][path][method.lower()]
    inputs = ["requestBody"] if "requestBody" in operation else []
    for parameter in operation.get("parameters", []):
        if "$ref" in parameter:
            parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        if {k: v for k, v in parameter["schema"].items() if k != "example"} != {
                "type": "string"}:
            inputs.append(parameter["name"])
    return inputs


def test_only_operations_without_constrained_input_skip_negative_fuzzing() -> None:
    free = {(m, p) for m, p in OPERATIONS if not constrained_inputs(m, p)}
    assert ("GET", "/health") in free and ("GET", "/api/v1/markets/{market}/ticker") in free
    assert constrained_inputs("GET", "/api/v1/markets/{market}/depth") == ["limit"]
    assert constrained_inputs("POST", "/api/v1/orders") == ["requestBody"]


def replace_view(view: Any) -> Any:
    def breaks(app: Any) -> None:
        app.view_functions["market_data.list_markets"] = view

    return breaks


def drop_request_id(app: Any) -> None:
    inner = app.wsgi_app

    def middleware(environ, start_response):  # type: ignore[no-untyped-def]
        def without(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
            kept = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            return start_response(status, kept, exc_info)

        return inner(environ, without)

    app.wsgi_app = middleware


@pytest.mark.parametrize(
    ("breaks", "problem"),
    [
        (replace_view(lambda: ({"error": "oops"}, 500)), "Server error"),
        (replace_view(lambda: [{"id": 1}]), "Response violates schema"),
        (replace_view(lambda: ("[]", 200, {"Content-Type": "text/plain"})),
         "Undocumented Content-Type"),
        (replace_view(lambda: ({}, 418)), "Undocumented status code"),
        (drop_request_id, "Missing required response headers"),
    ],
)
def test_the_harness_catches_what_it_should(fuzzed_app, breaks, problem: str) -> None:  # type: ignore[no-untyped-def]
    breaks(fuzzed_app)
    with pytest.raises((AssertionError, BaseExceptionGroup)) as caught:  # schemathesis' failures
        fuzz_operation(fuzzed_app, "GET", "/api/v1/markets", GenerationMode.POSITIVE)
    assert problem in str(caught.value) or any(
        problem in str(e) for e in getattr(caught.value, "exceptions", ())
    )


def test_the_fuzzer_sees_every_served_operation(fuzzed_app) -> None:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", fuzzed_app)
    loaded = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert loaded == set(OPERATIONS)
    assert {("GET", "/health"), ("GET", "/ready"), ("GET", "/api/v1/markets")} <= loaded
