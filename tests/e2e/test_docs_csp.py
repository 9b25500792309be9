"""Swagger UI still works under the security headers: a real browser renders /api/docs.

Headless Chromium loads the page from a real HTTP server and must end up with the operations
rendered (Swagger UI fetched its scripts, ran its inline start-up script and fetched
/api/openapi.json under the docs Content-Security-Policy). The same page under the strict API
policy renders nothing, which shows the check can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from stockex.api import create_app, security

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def serve(database, make_settings) -> Iterator:  # type: ignore[type-arg]
    servers = []

    def start() -> str:
        app = create_app(make_settings(database.url), db=database)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def rendered_operations(url: str, profile: Path) -> list[str]:
    result = subprocess.run(  # noqa: S603 - fixed binary, our own URL
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
            "--virtual-time-budget=15000", f"--user-data-dir={profile}", f"{url}/api/docs",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = 'opblock-summary-path" data-path="'
    return [part.split('"', 1)[0] for part in result.stdout.split(marker)[1:]]


def test_swagger_ui_renders_under_the_docs_policy(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    operations = rendered_operations(serve(), tmp_path / "profile")
    assert {"/health", "/ready", "/api/v1/markets"} <= set(operations)


def test_the_strict_api_policy_would_break_it(serve, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(security, "DOCS_CSP", security.API_CSP)
    assert rendered_operations(serve(), tmp_path / "profile") == []
