"""TikiClient against real HTTP on loopback: the simulator, a scripted upstream for bodies
and statuses the simulator never produces, and a raw-socket upstream for answers no WSGI
server sends (a dripping body, an endless chunked one). Backoff sleeps are recorded, not
waited out.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

import pytest
import requests
from werkzeug.serving import make_server

from stockex.tiki import (
    Kline,
    TikiClient,
    UpstreamDataError,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from stockex.tiki.simulator import DEFAULT_ORIGIN, Simulator, SimulatorConfig, kline_at

ORIGIN = DEFAULT_ORIGIN
T0, T9 = ORIGIN, ORIGIN + 9 * 60  # a ten-minute window


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class ScriptedUpstream:
    """WSGI app answering queued (status, body, headers); records every request it gets."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes, list[tuple[str, str]]]] = []
        self.requests: list[dict[str, Any]] = []

    def answer(self, body: str | bytes, status: int = 200, **headers: str) -> None:
        raw = body.encode() if isinstance(body, str) else body
        self.answers.append((status, raw, [(k.replace("_", "-"), v) for k, v in headers.items()]))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.requests.append(
            {
                "path": environ["PATH_INFO"],
                "query": parse_qs(environ["QUERY_STRING"]),
                "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
            }
        )
        status, body, headers = self.answers.pop(0) if self.answers else (500, b"no script", [])
        start_response(f"{status} X", [("Content-Length", str(len(body))), *headers])
        return [body]


class RawUpstream:
    """A loopback HTTP/1.1 server on raw sockets, for answers no WSGI server sends: a body
    dripped a byte at a time, a chunked body with no end in sight. ``respond(conn, stop)``
    writes the answer once the request head is in; a client hanging up ends it."""

    def __init__(self, respond: Callable[[socket.socket, threading.Event], None]) -> None:
        self._respond = respond
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._handlers: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections += 1
            handler = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._handlers.append(handler)
            handler.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                self._respond(conn, self._stop)
            except OSError:
                pass  # the client hung up

    def all_hung_up(self, within: float) -> bool:
        """Whether every answer ended (the client closed its connection) within ``within`` s."""
        end = time.monotonic() + within
        for handler in list(self._handlers):
            handler.join(max(0.0, end - time.monotonic()))
        return not any(handler.is_alive() for handler in self._handlers)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._acceptor.join(5)
        self.all_hung_up(5)


def drip(body: bytes, every: float) -> Callable[[socket.socket, threading.Event], None]:
    """An answer whose body comes one byte per ``every`` seconds, never stalling longer."""

    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):
            if stop.wait(every):
                return
            conn.sendall(body[i:i + 1])

    return respond


def chunked_array(spaces: int) -> Callable[[socket.socket, threading.Event], None]:
    """A chunked answer, no Content-Length: ``[``, ``spaces`` blanks, ``]`` (valid JSON)."""

    def respond(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n")
        piece = b" " * 4096
        for _ in range(spaces // len(piece)):
            if stop.is_set():
                return
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"1\r\n]\r\n0\r\n\r\n")

    return respond


def encoded(body: bytes, encoding: str, *, chunked: bool = False,
            every: float = 0.0) -> Callable[[socket.socket, threading.Event], None]:
    """An answer with ``body`` sent as it is (``Content-Encoding: encoding``), with its
    Content-Length or chunked in pieces of 64 KiB, or a byte per ``every`` seconds."""

    def respond(conn: socket.socket, stop: threading.Event) -> None:
        framing = (b"Transfer-Encoding: chunked" if chunked or every
                   else b"Content-Length: %d" % len(body))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Encoding: %s\r\n%s\r\n\r\n" % (encoding.encode(), framing))
        if not (chunked or every):
            conn.sendall(body)
            return
        step = 1 if every else 65536
        for i in range(0, len(body), step):
            if stop.wait(every) if every else stop.is_set():
                return
            piece = body[i:i + step]
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")

    return respond


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.fixture
def raw_upstream() -> Iterator[Callable[..., RawUpstream]]:
    servers: list[RawUpstream] = []

    def start(respond: Callable[[socket.socket, threading.Event], None]) -> RawUpstream:
        servers.append(RawUpstream(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def count_body_reads(session: requests.Session) -> list[int]:
    """Sizes of the body reads made on ``session``'s answers (a response hook runs once the
    head is in, before any of the body is read). urllib3's read, read1 and read_chunked do
    not call one another, so no byte is counted twice."""
    sizes: list[int] = []

    def hook(response: requests.Response, **_: Any) -> None:
        raw = response.raw
        for name in ("read", "read1"):
            read = getattr(raw, name)

            def counted(*args: Any, _read: Any = read, **kwargs: Any) -> bytes:
                data = _read(*args, **kwargs)
                sizes.append(len(data))
                return data

            setattr(raw, name, counted)
        chunked = raw.read_chunked

        def counted_chunks(*args: Any, **kwargs: Any) -> Iterator[bytes]:
            for data in chunked(*args, **kwargs):
                sizes.append(len(data))
                yield data

        raw.read_chunked = counted_chunks

    session.hooks["response"].append(hook)
    return sizes


def _serve(app: Any) -> tuple[str, Any]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return f"http://127.0.0.1:{server.port}", stop


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def sim_client(sleeps: SleepRecorder) -> Iterator[Any]:
    """Build (simulator, client) pairs; servers and sessions are closed after the test."""
    cleanup = []

    def build(*, timeout: float = 5.0, max_attempts: int = 6, **config: Any):
        config.setdefault("clock", FakeClock(ORIGIN + 30 * 86_400))
        sim = Simulator(SimulatorConfig(**config))
        handle = sim.serve()
        client = TikiClient(
            handle.url, timeout, max_attempts=max_attempts, backoff_base=0.01, sleep=sleeps
        )
        cleanup.extend([client.close, handle.shutdown])
        return sim, client

    yield build
    for step in cleanup:
        step()


@pytest.fixture
def scripted(sleeps: SleepRecorder) -> Iterator[tuple[ScriptedUpstream, TikiClient]]:
    upstream = ScriptedUpstream()
    url, stop = _serve(upstream)
    client = TikiClient(url, 5.0, max_attempts=3, backoff_base=0.01, sleep=sleeps)
    yield upstream, client
    client.close()
    stop()


def expected(ts_list: list[int]) -> list[Kline]:
    return [Kline(*kline_at("asaxu", ts)) for ts in ts_list]


def minutes(first: int, last: int) -> list[int]:
    return list(range(first, last + 1, 60))


# --- contract basics ------------------------------------------------------------------------


def test_default_base_url_is_the_real_exchange() -> None:
    with TikiClient() as client:
        assert client.base_url == "https://api.tiki.vn"
        assert client.klines_url("asaxu") == "https://api.tiki.vn/rally/markets/asaxu/klines"
        assert client.timeout == 10.0


def test_fetch_returns_the_simulated_rows_exactly(sim_client, sleeps) -> None:
    sim, client = sim_client()
    assert client.fetch_klines("asaxu", T0, T9) == expected(minutes(T0, T9))
    assert sim.request_count == 1 and sleeps.delays == []


def test_request_carries_params_and_browser_headers(scripted) -> None:
    upstream, client = scripted
    upstream.answer("[]")
    assert client.fetch_klines("asaxu", T0, T9) == []
    request = upstream.requests[0]
    assert request["path"] == "/rally/markets/asaxu/klines"
    assert request["query"] == {"period": ["1"], "time_from": [str(T0)], "time_to": [str(T9)]}
    headers = request["headers"]
    assert headers["HTTP_ACCEPT"] == "application/json, text/plain, */*"
    assert headers["HTTP_ORIGIN"] == "https://exchange.tiki.vn"
    assert headers["HTTP_REFERER"] == "https://exchange.tiki.vn/"
    assert headers["HTTP_ACCEPT_LANGUAGE"] == "vi-VN,vi;q=0.9,en;q=0.8"
    # Only what the client decodes itself, even with Brotli or zstd importable.
    assert headers["HTTP_ACCEPT_ENCODING"] == "gzip, deflate"
    assert "Chrome/" in headers["HTTP_USER_AGENT"] and "Mozilla/5.0" in headers["HTTP_USER_AGENT"]


def test_decimals_stay_exact(scripted) -> None:
    upstream, client = scripted
    upstream.answer(f"[[{T0}, 0.1, 0.30000000000000004, 0.1, 0.2, 12.345]]")
    (kline,) = client.fetch_klines("asaxu", T0, T9)
    exact = [Decimal(v) for v in ("0.1", "0.30000000000000004", "0.1", "0.2", "12.345")]
    assert kline == Kline(T0, *exact)
    assert all(type(v) is Decimal for v in (kline.open, kline.high, kline.volume))
    assert str(kline.volume) == "12.345"


def test_the_widest_values_the_database_stores_pass(scripted) -> None:
    upstream, client = scripted
    upstream.answer(f"[[{T0},1,999999999999999999.999999999999999999,0.000000000000000001,"
                    f"1.0000000000000000000000,25e2]]")  # trailing zeros and an exponent fit
    [kline] = client.fetch_klines("asaxu", T0, T9)
    assert kline.high == Decimal("999999999999999999.999999999999999999")
    assert (kline.low, kline.close, kline.volume) == (Decimal("1E-18"), 1, 2500)


def test_rows_are_sorted_and_a_repeated_ts_keeps_the_last(scripted) -> None:
    upstream, client = scripted
    t1 = T0 + 60
    upstream.answer(f"[[{t1},5,6,4,5,1],[{T0},1,2,1,2,1],[{t1},5,9,4,8,2]]")
    assert [(k.ts, k.close) for k in client.fetch_klines("asaxu", T0, T9)] == [
        (T0, Decimal(2)),
        (t1, Decimal(8)),
    ]


def test_capped_answer_is_returned_as_is(sim_client) -> None:
    _, client = sim_client(max_rows=4)
    assert client.fetch_klines("asaxu", T0, T9) == expected(minutes(T0, T0 + 180))


def test_gaps_are_simply_missing(sim_client) -> None:
    _, client = sim_client(gaps=((T0 + 60, T0 + 120),))
    got = client.fetch_klines("asaxu", T0, T0 + 240)
    assert [k.ts for k in got] == [T0, T0 + 180, T0 + 240]
    assert got == expected([T0, T0 + 180, T0 + 240])


def test_time_from_after_time_to_is_a_caller_bug() -> None:
    with TikiClient("http://127.0.0.1:9") as client, pytest.raises(ValueError):
        client.fetch_klines("asaxu", T9, T0)


# --- validation -----------------------------------------------------------------------------


def test_malformed_simulated_row_names_market_and_ts(sim_client) -> None:
    bad = T0 + 3 * 60
    _, client = sim_client(malformed_ts=bad)
    with pytest.raises(UpstreamDataError) as caught:
        client.fetch_klines("asaxu", T0, T9)
    error = caught.value
    assert (error.market, error.ts) == ("asaxu", bad)
    assert "high" in error.problem and "max(open, close)" in error.problem
    assert str(error).startswith(f"asaxu ts={bad} (2023-12-31T17:03:00Z): high ")


@pytest.mark.parametrize(
    ("row", "bad_ts", "problem"),
    [
        (f"[{T0},1,2,1,2]", T0, "5 fields"),
        (f"[{T0},1,2,1,2,1,7]", T0, "7 fields"),
        ("[]", None, "0 fields"),
        (f"[{T0 + 30},1,2,1,2,1]", T0 + 30, "multiple of 60"),
        (f"[{T0}.0,1,2,1,2,1]", None, "not an integer"),
        (f'["{T0}",1,2,1,2,1]', None, "not an integer"),
        (f"[{T0 - 60},1,2,1,2,1]", T0 - 60, "outside the window"),
        (f"[{T9 + 60},1,2,1,2,1]", T9 + 60, "outside the window"),
        (f"[{T0},1,2,1,2,-1]", T0, "volume -1 is negative"),
        (f"[{T0},-1,2,-1,2,1]", T0, "open -1 is negative"),
        (f'[{T0},"1",2,1,2,1]', T0, "open '1' is not a number"),
        (f'[{T0},1,2,1,2,"NaN"]', T0, "not a number"),
        (f"[{T0},1,2,1,2,NaN]", T0, "volume NaN is not finite"),
        (f"[{T0},1,Infinity,1,2,1]", T0, "high Infinity is not finite"),
        # what DECIMAL(36,18) cannot store: the database would refuse it on every run
        (f"[{T0},1,2,1,2,0.0000000000000000001]", T0, "volume 1E-19 does not fit"),
        (f"[{T0},1,2,1,2,1e-19]", T0, "volume 1E-19 does not fit"),
        (f"[{T0},1,1000000000000000000,1,2,1]", T0, "high 1000000000000000000 does not fit"),
        (f"[{T0},1,2,1,2,1.5e18]", T0, "volume 1.5E+18 does not fit"),
        (f"[{T0},true,2,1,2,1]", T0, "open True is not a number"),
        (f"[{T0},1,2,1,2,null]", T0, "volume None is not a number"),
        (f"[{T0},10,9,8,9,1]", T0, "high 9 < max(open, close) 10"),
        (f"[{T0},5,9,6,7,1]", T0, "low 6 > min(open, close) 5"),
        ('{"not": "a row"}', None, "row is not an array"),
    ],
)
def test_each_invalid_row_rejects_the_whole_answer(scripted, row, bad_ts, problem) -> None:
    upstream, client = scripted
    upstream.answer(f"[[{T0 + 60},1,2,1,2,1],{row}]")
    with pytest.raises(UpstreamDataError) as caught:
        client.fetch_klines("asaxu", T0, T9)
    assert caught.value.market == "asaxu"
    assert caught.value.ts == bad_ts
    assert problem in caught.value.problem
    assert str(caught.value).startswith("asaxu")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('{"errors": ["market.market.doesnt_exist"]}', "not a JSON array"),
        ("<html>maintenance</html>", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_a_body_that_is_not_an_array_is_a_data_error(scripted, sleeps, body, problem) -> None:
    upstream, client = scripted
    upstream.answer(body)
    with pytest.raises(UpstreamDataError) as caught:
        client.fetch_klines("asaxu", T0, T9)
    assert caught.value.ts is None and problem in caught.value.problem
    assert len(upstream.requests) == 1 and sleeps.delays == []  # bad data is not retried


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        # a CDN's bot check answered 200, a maintenance notice, a web app at a wrong base_url
        ('<!DOCTYPE html><html lang="en-US"><head><meta charset="UTF-8"><meta name="viewport" '
         'content="width=device-width,initial-scale=1"><title>Just a moment...</title>',
         "an HTML page titled 'Just a moment...'"),
        ("<html><head><title>\n  Tiki Exchange | B\u1ea3o tr\u00ec\n</title></head></html>",
         "an HTML page titled 'Tiki Exchange | B\u1ea3o tr\u00ec'"),
        ("Service Unavailable", "b'Service Unavailable'"),
    ],
)
def test_a_body_that_is_not_json_says_what_came_instead(scripted, body, shown) -> None:
    upstream, client = scripted
    upstream.answer(body, Content_Type="text/html; charset=utf-8")
    with pytest.raises(UpstreamDataError) as caught:
        client.fetch_klines("asaxu", T0, T9)
    assert "not valid JSON" in caught.value.problem
    assert caught.value.problem.endswith(f": {shown}")


# --- retries --------------------------------------------------------------------------------


def test_every_third_request_failing_with_5xx_is_survived(sim_client, sleeps) -> None:
    sim, client = sim_client(error_every=3)
    windows = [(T0 + i * 600, T0 + i * 600 + 540) for i in range(5)]
    for first, last in windows:
        assert client.fetch_klines("asaxu", first, last) == expected(minutes(first, last))
    # Requests 3 and 6 failed: five answers cost seven requests and two backoffs.
    assert sim.request_count == 7
    assert len(sleeps.delays) == 2
    assert all(0 <= d <= 0.01 for d in sleeps.delays)  # first retry: full jitter up to base


def test_backoff_grows_exponentially_and_is_capped(scripted, sleeps) -> None:
    upstream, _ = scripted
    client = TikiClient(
        _url_of(scripted), max_attempts=6, backoff_base=0.01, backoff_max=0.05, sleep=sleeps
    )
    with client:
        for _ in range(6):
            upstream.answer("busy", status=503)
        with pytest.raises(UpstreamUnavailable):
            client.fetch_klines("asaxu", T0, T9)
    ceilings = [0.01, 0.02, 0.04, 0.05, 0.05]
    assert len(sleeps.delays) == len(ceilings)
    assert all(0 <= d <= c for d, c in zip(sleeps.delays, ceilings, strict=True))


def test_429_honours_retry_after(sim_client, sleeps) -> None:
    sim, client = sim_client(rate_limit_every=2)
    assert client.fetch_klines("asaxu", T0, T9) == expected(minutes(T0, T9))
    assert client.fetch_klines("asaxu", T0, T9) == expected(minutes(T0, T9))
    assert sleeps.delays == [1.0]
    assert sim.request_count == 3


def test_retry_after_is_honoured_beyond_backoff_max_up_to_its_own_cap(scripted, sleeps) -> None:
    upstream, _ = scripted
    with TikiClient(_url_of(scripted), backoff_max=2.5, sleep=sleeps) as client:
        upstream.answer("slow down", status=429, Retry_After="120")
        upstream.answer("slow down", status=429, Retry_After="86400")
        upstream.answer("[]")
        assert client.fetch_klines("asaxu", T0, T9) == []
    assert sleeps.delays == [120.0, 300.0]  # asked for; capped at retry_after_max


def test_timeouts_are_retried(sim_client, sleeps) -> None:
    sim, client = sim_client(timeout=0.2, slow_every=2, slow_seconds=1.0)
    assert client.fetch_klines("asaxu", T0, T9) == expected(minutes(T0, T9))
    # Request 2 outlives the 0.2 s timeout; request 3 answers.
    assert client.fetch_klines("asaxu", T0, T9) == expected(minutes(T0, T9))
    assert sim.request_count == 3
    assert len(sleeps.delays) == 1


def test_404_unknown_market_is_not_retried(sim_client, sleeps) -> None:
    sim, client = sim_client()
    with pytest.raises(UpstreamRejected) as caught:
        client.fetch_klines("dogevnd", T0, T9)
    assert caught.value.status == 404
    assert "/rally/markets/dogevnd/klines" in caught.value.url
    assert "HTTP 404" in str(caught.value)
    assert sim.request_count == 1 and sleeps.delays == []


def test_errors_write_their_times_in_the_clients_timezone(sim_client) -> None:
    """The crawler's log lines, run rows and alerts are in the configured timezone; the
    upstream errors they quote are too, not in UTC beside them."""
    bad = T0 + 3 * 60
    _, client = sim_client(malformed_ts=bad, error_rate=0.0)
    client.timezone = ZoneInfo("Asia/Ho_Chi_Minh")
    with pytest.raises(UpstreamDataError) as malformed:
        client.fetch_klines("asaxu", T0, T9)
    assert str(malformed.value).startswith(f"asaxu ts={bad} (2024-01-01T00:03:00+07:00): high ")
    _, failing = sim_client(error_rate=1.0, max_attempts=2)
    failing.timezone = ZoneInfo("Asia/Ho_Chi_Minh")
    with pytest.raises(UpstreamUnavailable) as unavailable:
        failing.fetch_klines("asaxu", T0, T9)
    assert str(unavailable.value).startswith(
        "asaxu [2024-01-01T00:00:00+07:00 .. 2024-01-01T00:09:00+07:00]: upstream unavailable")


def test_exhausted_retries_raise_unavailable_naming_market_window_and_status(
    sim_client, sleeps
) -> None:
    sim, client = sim_client(error_rate=1.0, max_attempts=3)
    with pytest.raises(UpstreamUnavailable) as caught:
        client.fetch_klines("asaxu", T0, T9)
    message = str(caught.value)
    assert "asaxu" in message and "2023-12-31T17:00:00Z" in message and "HTTP 503" in message
    assert isinstance(caught.value, UpstreamError)
    assert sim.request_count == 3 and len(sleeps.delays) == 2


def test_a_retried_html_page_is_named_by_its_title(scripted, sleeps) -> None:
    """A CDN in front of the exchange answers its bot check with 503 (something to act on,
    not to wait out) and its own outages with 52x: "HTTP 503" alone does not tell which."""
    upstream, client = scripted
    challenge = ('<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
                 + "<script>" + "x" * 5000 + "</script></head></html>")
    upstream.answer("<html><head><title>api.tiki.vn | 522: Connection timed out</title>", 522)
    upstream.answer('{"errors": ["too_many_requests"]}', 429, Retry_After="1")
    upstream.answer(challenge, 503, Content_Type="text/html")
    with pytest.raises(UpstreamUnavailable) as caught:
        client.fetch_klines("asaxu", T0, T9)
    assert caught.value.last_failure == "HTTP 503 (an HTML page titled 'Just a moment...')"
    assert str(caught.value).endswith("last: HTTP 503 (an HTML page titled 'Just a moment...')")
    assert len(upstream.requests) == 3 and sleeps.delays[1] == 1.0


def test_connection_refused_is_retried_then_unavailable(sleeps) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with TikiClient(f"http://127.0.0.1:{port}", max_attempts=2, sleep=sleeps) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            client.fetch_klines("asaxu", T0, T9)
    assert "ConnectionError" in caught.value.last_failure
    assert len(sleeps.delays) == 1


def test_a_session_passed_in_is_used_and_left_open(scripted) -> None:
    upstream, _ = scripted
    upstream.answer("[]")
    upstream.answer("[]")
    with requests.Session() as session:
        with TikiClient(_url_of(scripted), session=session) as client:
            assert client.fetch_klines("asaxu", T0, T9) == []
        # Still usable after the client closed: it was not the client's to close.
        assert session.get(f"{_url_of(scripted)}/x", timeout=5).status_code == 200
    assert "Chrome/" in upstream.requests[0]["headers"]["HTTP_USER_AGENT"]


def _url_of(scripted: tuple[ScriptedUpstream, TikiClient]) -> str:
    return scripted[1].base_url


# --- deadline and size cap ------------------------------------------------------------------


# A body that takes 3 s or more to come, a byte per 0.05 s. gzip: the header, then empty
# stored deflate blocks, so bytes keep coming while nothing decodes (urllib3's own decoding
# would read on past any deadline).
PLAIN_DRIP = b"[" + b" " * 58 + b"]"  # 60 bytes
GZIP_DRIP = gzipped(b"")[:10] + b"\x00\x00\x00\xff\xff" * 12  # 70 bytes


@pytest.mark.parametrize(("body", "answer"), [
    (PLAIN_DRIP, drip(PLAIN_DRIP, every=0.05)),
    (GZIP_DRIP, encoded(GZIP_DRIP, "gzip", every=0.05)),
], ids=["plain", "gzip"])
def test_a_dripping_body_is_cut_off_at_the_deadline_and_retried(raw_upstream, sleeps, body,
                                                                 answer) -> None:
    upstream = raw_upstream(answer)
    timeout, attempts = 0.3, 2
    with TikiClient(upstream.url, timeout, max_attempts=attempts, sleep=sleeps) as client:
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as caught:
            client.fetch_klines("asaxu", T0, T9)
        elapsed = time.monotonic() - started
    assert caught.value.last_failure == "deadline: body not received within 0.3 s"
    assert caught.value.attempts == attempts and upstream.connections == attempts
    assert len(sleeps.delays) == attempts - 1  # backed off like any timeout
    # Each attempt: the deadline plus at most one more read timeout (and some slack).
    assert elapsed < attempts * (timeout + timeout) + 0.5 < len(body) * 0.05
    assert upstream.all_hung_up(within=1.0)  # each cut-off response was closed


def test_the_deadline_is_per_attempt(scripted, sleeps) -> None:
    upstream, _ = scripted
    upstream.answer("[]")
    upstream.answer("[]")
    clock = FakeClock(1000.0)

    def late_first_head(response: requests.Response, **_: Any) -> None:
        if len(upstream.requests) == 1:  # the head came in, then time ran out
            clock.now += 5.0 + 0.001

    with requests.Session() as session:
        session.hooks["response"].append(late_first_head)
        client = TikiClient(_url_of(scripted), 5.0, session=session, sleep=sleeps, clock=clock)
        assert client.fetch_klines("asaxu", T0, T9) == []
    assert len(upstream.requests) == 2 and len(sleeps.delays) == 1


def test_an_oversized_body_by_content_length_is_a_data_error_not_retried(
    scripted, sleeps
) -> None:
    upstream, _ = scripted
    cap = 1000
    upstream.answer("[" + " " * (cap - 2) + "]")  # exactly the cap: fine
    upstream.answer("[" + " " * (cap - 1) + "]")
    with requests.Session() as session:
        reads = count_body_reads(session)
        client = TikiClient(_url_of(scripted), session=session, max_body_bytes=cap, sleep=sleeps)
        assert client.fetch_klines("asaxu", T0, T9) == []
        assert sum(reads) == cap
        reads.clear()
        with pytest.raises(UpstreamDataError) as caught:
            client.fetch_klines("asaxu", T0, T9)
    assert caught.value.market == "asaxu" and caught.value.ts is None
    assert caught.value.problem.startswith("body of 1001 bytes (Content-Length) is over the "
                                           "1000-byte cap")
    assert sum(reads) == 0  # refused by its head: none of the body was read
    assert len(upstream.requests) == 2 and sleeps.delays == []  # not retried


def test_an_oversized_chunked_body_is_cut_off_after_cap_plus_one_bytes(
    raw_upstream, sleeps
) -> None:
    upstream = raw_upstream(chunked_array(spaces=2 * 1024 * 1024))
    cap = 1000
    with requests.Session() as session:
        reads = count_body_reads(session)
        client = TikiClient(upstream.url, session=session, max_body_bytes=cap, sleep=sleeps)
        with pytest.raises(UpstreamDataError) as caught:
            client.fetch_klines("asaxu", T0, T9)
    assert caught.value.market == "asaxu"
    assert caught.value.problem.startswith("body is over the 1000-byte cap")
    assert 0 < sum(reads) <= cap + 1
    assert upstream.connections == 1 and sleeps.delays == []  # not retried


def test_the_body_of_a_rejection_is_read_only_for_its_start(scripted, sleeps) -> None:
    upstream, _ = scripted
    start = '{"errors": ["market.market.doesnt_exist"]}'
    upstream.answer(start + " " * 2 * 1024 * 1024, status=404)
    with requests.Session() as session:
        reads = count_body_reads(session)
        client = TikiClient(_url_of(scripted), session=session, sleep=sleeps)
        with pytest.raises(UpstreamRejected) as caught:
            client.fetch_klines("dogevnd", T0, T9)
    assert caught.value.status == 404
    assert str(caught.value).endswith(": " + (start + " " * 200)[:200])
    assert sum(reads) <= 1024
    assert sleeps.delays == []


ROW = [T0, 1, 2, 0.5, 1.5, 10]


@pytest.mark.parametrize(("encoding", "compress"),
                         [("gzip", gzipped), ("deflate", zlib.compress)])
@pytest.mark.parametrize("chunked", [False, True])
def test_compressed_answers_are_decoded(raw_upstream, sleeps, encoding, compress,
                                        chunked) -> None:
    rows = json.dumps([ROW, [T9, 2, 2, 2, 2, 0]]).encode()
    upstream = raw_upstream(encoded(compress(rows), encoding, chunked=chunked))
    with TikiClient(upstream.url, sleep=sleeps) as client:
        klines = client.fetch_klines("asaxu", T0, T9)
    assert [k.ts for k in klines] == [T0, T9]
    assert klines[0].high == Decimal("2") and klines[0].volume == Decimal("10")


def test_a_compression_bomb_stops_at_the_cap(raw_upstream, sleeps) -> None:
    bomb = gzipped(b"[" + b" " * (64 * 1024 * 1024) + b"]")  # 64 MiB in about 64 KiB
    upstream = raw_upstream(encoded(bomb, "gzip"))
    with requests.Session() as session:
        reads = count_body_reads(session)
        client = TikiClient(upstream.url, session=session, max_body_bytes=1000, sleep=sleeps)
        with pytest.raises(UpstreamDataError) as caught:
            client.fetch_klines("asaxu", T0, T9)
    assert caught.value.problem.startswith("body is over the 1000-byte cap")
    assert sum(reads) <= 64 * 1024  # one raw read decoded 1,001 bytes, and that was all
    assert sleeps.delays == []


@pytest.mark.parametrize(("encoding", "body", "problem"), [
    ("br", b"\x0b\x01\x80[]\x03", "Content-Encoding 'br' was not asked for"),
    ("gzip", b"not gzip at all", "the body does not decode: "),
    ("gzip", gzipped(b"[]")[:-4], "the compressed body ends early"),
])
def test_a_body_that_does_not_decode_is_a_data_error(raw_upstream, sleeps, encoding, body,
                                                     problem) -> None:
    upstream = raw_upstream(encoded(body, encoding))
    with TikiClient(upstream.url, sleep=sleeps) as client:
        with pytest.raises(UpstreamDataError) as caught:
            client.fetch_klines("asaxu", T0, T9)
    assert caught.value.problem.startswith(problem)
    assert upstream.connections == 1 and sleeps.delays == []  # not retried
