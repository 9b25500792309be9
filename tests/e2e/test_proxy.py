"""The deployment's nginx (deploy/nginx/stockex.conf.template, compose's `proxy` service) in
front of the API under gunicorn, both on loopback.

gunicorn gives a connection a thread as soon as the request starts and waits for the rest as
long as it takes: a few clients that stop half-way hold every thread. nginx reads requests
whole, with timeouts, so the same clients sent to it never reach the API. The template is the
one compose mounts, rendered as the nginx image renders it (only its variables replaced).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import stockex
from stockex.db import Database
from stockex.migrate import upgrade
from stockex.testing import (
    api_server_command,
    free_port,
    nginx_binary,
    nginx_command,
    render_nginx_template,
    wait_for_api_server,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx" / "stockex.conf.template"
SRC = str(Path(stockex.__file__).resolve().parent.parent)
THREADS = 2  # gunicorn: 1 worker of 2 threads
STALLED = 4 * THREADS

pytestmark = pytest.mark.skipif(
    nginx_binary() is None,
    reason="nginx is not installed (apt-get install nginx; `make test` installs it)",
)


@dataclass
class Stack:
    api_port: int
    proxy_port: int
    api_log: Path

    def api_lines(self) -> list[str]:
        return self.api_log.read_text(errors="replace").splitlines()


def start_nginx(directory: Path, api_port: int) -> tuple[subprocess.Popen[bytes], int]:
    directory.mkdir()
    port = free_port()
    site = render_nginx_template(TEMPLATE, {
        "NGINX_PORT": f"127.0.0.1:{port}",
        "STOCKEX_API_ADDRESS": f"127.0.0.1:{api_port}",
        "NGINX_LOCAL_RESOLVERS": "127.0.0.1",  # unused: the address is not a name
    })
    process = subprocess.Popen(nginx_command(directory, site), start_new_session=True)  # noqa: S603

    def listening() -> None:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                listening()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((directory / "error.log").read_text()) from None
                time.sleep(0.05)
    except BaseException:
        process.kill()
        raise
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("proxy")
    url = f"sqlite:///{directory / 'stockex.db'}"
    db = Database(url)
    upgrade(db)
    db.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    env.update({
        "PYTHONPATH": SRC + os.pathsep + env.get("PYTHONPATH", ""),
        "STOCKEX__DATABASE__URL": url,
        "STOCKEX__SECRET_KEY": "k" * 40,
        "STOCKEX__API__PROXY_HOPS": "1",  # as compose sets it
        "STOCKEX__API__PASSWORD_RATE_LIMIT": "2 per minute",
    })
    api_port = free_port()
    api_log = directory / "api.log"
    with api_log.open("wb") as log:
        api = subprocess.Popen(  # noqa: S603
            api_server_command("gunicorn", api_port, 1, THREADS), env=env, cwd=directory,
            stdout=log, stderr=log, start_new_session=True,
        )
    try:
        wait_for_api_server("gunicorn", api_port, api, 1)
        proxy, proxy_port = start_nginx(directory / "nginx", api_port)
        try:
            yield Stack(api_port, proxy_port, api_log)
        finally:
            stop(proxy)
    finally:
        stop(api)


def stall(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that start a request and stop: half of them in the headers,
    half in the body (1,000 bytes announced, one sent)."""
    sockets = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                     b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        sockets.append(sock)
    time.sleep(0.5)  # each is taken in (by a gunicorn thread, or by nginx)
    return sockets


def request(port: int, method: str, path: str, body: bytes | None = None, *,
            source: str = "127.0.0.1", timeout: float = 5,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                       **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, dict(response.getheaders()), json.loads(raw)
    finally:
        conn.close()


def test_stalled_clients_do_not_take_the_api_down_through_nginx(stack: Stack) -> None:
    before = len(stack.api_lines())
    sockets = stall(stack.proxy_port, STALLED)
    try:
        for _ in range(3):
            started = time.monotonic()
            status, _, body = request(stack.proxy_port, "GET", "/health")
            assert (status, body) == (200, {"status": "ok"})
            assert time.monotonic() - started < 2
        # nginx passed none of them on: the API has not seen a login
        assert not [line for line in stack.api_lines()[before:] if "/api/v1/auth/login" in line]
    finally:
        for sock in sockets:
            sock.close()


def test_the_same_stalled_clients_hang_gunicorn_reached_directly(stack: Stack) -> None:
    """What the proxy is for (and that the test above could fail): every thread waits."""
    sockets = stall(stack.api_port, STALLED)
    try:
        with pytest.raises(TimeoutError):
            request(stack.api_port, "GET", "/health", timeout=2)
    finally:
        for sock in sockets:
            sock.close()
    # the threads get their end of file and the API serves again
    assert request(stack.api_port, "GET", "/health")[0] == 200


def test_nginx_refuses_a_body_over_64_kib_in_json_before_reading_it(stack: Stack) -> None:
    before = len(stack.api_lines())
    sock = socket.create_connection(("127.0.0.1", stack.proxy_port), timeout=5)
    with sock:
        # headers only: nginx answers from the announced length, without waiting for the body
        sock.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 102400\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read())
    assert response.status == 413
    assert response.getheader("Content-Type") == "application/json"
    assert body == {"error": {"code": "payload_too_large", "message":
                              "the request body is larger than 64 KiB (65536 bytes)",
                              "details": {}}}
    assert len(stack.api_lines()) == before  # the API never saw it
    # nginx's other refusals are JSON in the same shape, never its HTML pages
    for status, headers, path in ((431, {"X-Big": "a" * 10_000}, "/health"),
                                  (414, {}, "/" + "a" * 10_000),
                                  (404, {}, "/_proxy/errors/502")):
        got, response_headers, body = request(stack.proxy_port, "GET", path, headers=headers)
        assert got == status and set(body["error"]) == {"code", "message", "details"}, body
        assert response_headers["Content-Type"] == "application/json"


def test_the_api_sees_the_client_address_not_the_proxy(stack: Stack) -> None:
    """The access log's ip= and the per-address password limit (2 a minute here) are the
    client's (nginx's X-Forwarded-For, STOCKEX__API__PROXY_HOPS=1), and an address or a scheme
    the client makes up itself is ignored."""
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    before = len(stack.api_lines())
    answers = [
        request(stack.proxy_port, "POST", "/api/v1/auth/login",
                json.dumps({"username": f"nobody{i}", "password": "wrong-password"}).encode(),
                source="127.0.0.2", headers=forged)
        for i in range(3)
    ]
    assert [status for status, _, _ in answers] == [401, 401, 429]
    # plain HTTP to nginx is plain HTTP to the API, whatever the client says (no HSTS)
    assert all("Strict-Transport-Security" not in headers for _, headers, _ in answers)
    other = request(stack.proxy_port, "POST", "/api/v1/auth/login",
                    json.dumps({"username": "nobody", "password": "wrong-password"}).encode(),
                    source="127.0.0.3")
    assert other[0] == 401  # another client has its own budget
    logins = [line for line in stack.api_lines()[before:] if "POST /api/v1/auth/login" in line]
    assert [line.rsplit("ip=", 1)[1] for line in logins] == ["127.0.0.2"] * 3 + ["127.0.0.3"]


def test_nginx_answers_json_502_while_the_api_is_down(tmp_path: Path) -> None:
    proxy, port = start_nginx(tmp_path / "nginx", free_port())  # nothing listens there
    try:
        status, headers, body = request(port, "GET", "/api/v1/markets")
    finally:
        stop(proxy)
    assert status == 502 and body["error"]["code"] == "api_unavailable"
    assert headers["Content-Type"] == "application/json" and headers["Retry-After"] == "5"
