"""Acceptance 4 of issue 6: the OpenAPI document validates and describes the market data
routes completely, and Swagger UI's "Try it out" works for the candles route in a real
headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from openapi_spec_validator import validate
from werkzeug.serving import make_server

from stockex.api import create_app
from stockex.candles import store_minutes
from stockex.tiki import Kline
from stockex.trading import accounts

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
MARKET_ROUTES = ["candles", "ticker", "depth", "trades"]


def test_openapi_document_validates_and_describes_market_data(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/api/openapi.json").get_json()
    validate(json.loads(json.dumps(spec)))
    for route in MARKET_ROUTES:
        operation = spec["paths"][f"/api/v1/markets/{{market}}/{route}"]["get"]
        params = {p["name"]: p for p in operation["parameters"] if "name" in p}
        assert params["market"]["in"] == "path" and params["market"]["required"]
        assert {"200", "404"} <= set(operation["responses"])
    candles = spec["paths"]["/api/v1/markets/{market}/candles"]["get"]
    params = {p["name"]: p["schema"] for p in candles["parameters"] if "name" in p}
    assert params["period"]["enum"] == [1, 5, 15, 30, 60, 120, 240, 360, 720, 1440, 4320, 10080]
    assert (params["limit"]["minimum"], params["limit"]["maximum"]) == (1, 5000)
    assert params["limit"]["default"] == 500
    assert params["format"]["enum"] == ["json", "csv"]
    assert {"time_from", "time_to"} <= set(params)
    content = candles["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Candles"}
    assert "text/csv" in content
    assert candles["responses"]["400"] == {"$ref": "#/components/responses/E400"}
    candle = spec["components"]["schemas"]["Candle"]
    assert candle["required"] == ["time", "time_local", "open", "high", "low", "close",
                                  "volume"]


@pytest.fixture
def served_app(database, settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app on a loopback port, in a thread; yields its base URL."""
    now = int(time.time()) // 60 * 60
    klines = [Kline(now - 60 * i, Decimal(100 + i), Decimal(110 + i), Decimal(90 + i),
                    Decimal(105 + i), Decimal("0.5")) for i in range(180)]
    database.transaction(lambda s: store_minutes(s, "asaxu", klines))
    server = make_server("127.0.0.1", 0, create_app(settings, db=database), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at "
                    f"{CHROMIUM} (apt-get install chromium; `make test` installs it)")
@pytest.mark.parametrize("backend", ["sqlite"])
def test_swagger_ui_try_it_out_executes_candles(served_app: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = _docs_page(browser, served_app)
            operation = page.locator("#operations-market_data-getCandles")
            operation.locator(".opblock-summary").click()
            operation.locator("button.try-out__btn").click()
            operation.locator("tr[data-param-name='market'] input").fill("asaxu")
            operation.locator("tr[data-param-name='period'] select").select_option("60")
            operation.locator("tr[data-param-name='limit'] input").fill("2")
            operation.locator("button.execute").click()

            live = operation.locator(".live-responses-table tr.response")
            expect(live.locator(".response-col_status").first).to_have_text(
                "200", timeout=15_000
            )
            url = operation.locator(".request-url pre").inner_text()
            assert "/api/v1/markets/asaxu/candles?" in url and "period=60" in url
            body = json.loads(live.locator(".response-col_description pre").first
                              .inner_text())
            assert body["market"] == "asaxu" and body["period"] == 60
            assert len(body["candles"]) == 2
            assert body["candles"][-1]["time"] % 3600 == 0
        finally:
            browser.close()


def _docs_page(browser, served_app: str):  # type: ignore[no-untyped-def]
    """A new page on /api/docs. No internet here: anything not served by the app (web fonts)
    is refused at once."""
    page = browser.new_page()
    page.route(
        "**/*",
        lambda route: route.continue_()
        if route.request.url.startswith(served_app) else route.abort(),
    )
    page.goto(f"{served_app}/api/docs", wait_until="domcontentloaded")
    return page


def _try_it_out(page, operation_id: str, params: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Open one operation, press "Try it out", keep the request body Swagger UI offers, fill
    ``params`` and execute; returns (status, parsed body) as the page renders them."""
    from playwright.sync_api import expect

    operation = page.locator(f"#operations-{operation_id}")
    operation.locator(".opblock-summary").first.click()
    try_out = operation.locator("button.try-out__btn")
    if "cancel" not in (try_out.get_attribute("class") or ""):  # not in "Try it out" yet
        try_out.click()
    for name, value in (params or {}).items():
        operation.locator(f"tr[data-param-name='{name}'] input").fill(value)
    live = operation.locator(".live-responses-table tr.response")
    clear = operation.locator("button.btn-clear")
    if clear.count():  # executed before: its answer stays until cleared, and a new one can
        clear.click()  # show its status before its body (read the old body with the new code)
        expect(live).to_have_count(0)
    operation.locator("button.execute").click()
    status = live.locator(".response-col_status").first
    expect(status).to_have_text(re.compile(r"^\d{3}$"), timeout=15_000)
    body = json.loads(live.locator(".response-col_description pre").first.inner_text())
    result = int(status.inner_text()), body
    operation.locator(".opblock-summary").first.click()  # closed again: one open at a time
    return result


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at "
                    f"{CHROMIUM} (apt-get install chromium; `make test` installs it)")
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_user_trades_from_swagger_ui_with_its_examples(served_app: str, database,  # type: ignore[no-untyped-def]
                                                         settings) -> None:
    """What a newcomer does in /api/docs: register and log in with the request bodies the
    page offers, paste the token into "Authorize", then /me, place an order (the offered
    body), list it, cancel it, and cancel it again to see an error rendered. The offered
    bodies are the document's examples: they must be accepted as they stand (the register
    example's password used to be Swagger UI's "string", 6 characters, and the order example
    a limit buy with a price of 0.001 and a quote_amount too)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = _docs_page(browser, served_app)

            status, user = _try_it_out(page, "accounts-register")
            assert status == 201, user
            status, login = _try_it_out(page, "accounts-login")
            assert status == 200, login
            assert login["token_type"] == "Bearer"

            page.locator(".auth-wrapper button.authorize").click()
            dialog = page.locator(".modal-ux")
            assert "bearerAuth" in dialog.inner_text()
            dialog.locator("input").first.fill(login["access_token"])
            dialog.locator("button.authorize").click()
            dialog.locator("button.btn-done").click()

            status, me = _try_it_out(page, "accounts-me")
            assert (status, me["username"], me["id"]) == (200, user["username"], user["id"])

            accounts.deposit(database, settings, user["username"], "XU", "1000000")
            accounts.deposit(database, settings, user["username"], "ASA", "1000")
            status, order = _try_it_out(page, "trading-placeOrder")
            assert status == 201, order
            assert order["status"] == "open"
            status, listed = _try_it_out(page, "trading-listOrders")
            assert status == 200 and [o["id"] for o in listed] == [order["id"]]
            status, cancelled = _try_it_out(page, "trading-cancelOrder",
                                            {"order_id": str(order["id"])})
            assert (status, cancelled["status"]) == (200, "cancelled")
            status, error = _try_it_out(page, "trading-cancelOrder",
                                        {"order_id": str(order["id"])})
            assert status == 409
            assert error["error"]["code"] == "order_not_open"
            assert set(error["error"]) == {"code", "message", "details"}
        finally:
            browser.close()
