"""HTTP client for Tiki-Exchange one-minute k-lines.

Wire format: ``GET {base_url}/rally/markets/{market}/klines?period=1&time_from=S&time_to=S``
answers a JSON array ``[[ts, open, high, low, close, volume], ...]`` of JSON numbers, ``ts``
being the epoch second (UTC) at which the minute starts. Both bounds are inclusive. The
exchange runs Peatio, which may cap an answer, so fewer rows than the window holds is normal
and callers page on by the last ``ts`` they received (and, as a cap may keep the newest rows,
ask for the minutes before the first ``ts`` when it is not the first asked for).

Failure contract of :meth:`TikiClient.fetch_klines`:

* connection errors, timeouts, 429 and 5xx are retried with exponential backoff and full
  jitter; when ``max_attempts`` are used up, :class:`UpstreamUnavailable` is raised. A
  timeout is also an attempt whose body is not complete ``timeout`` seconds after the
  request began (the deadline: an upstream that drips bytes never trips a per-read timeout);
* any other 4xx is not retried: :class:`UpstreamRejected`;
* a body longer than ``max_body_bytes`` (:data:`MAX_BODY_BYTES` unless given), by its
  ``Content-Length`` or while it is read: :class:`UpstreamDataError`, not retried (the same
  request would get the same answer); at most ``max_body_bytes + 1`` bytes are read;
* a body that is not a JSON array of valid rows: :class:`UpstreamDataError` for the whole
  answer, so that the caller stores nothing of that chunk.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from itertools import chain
from operator import ge, le, lt
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote

import requests
from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

from stockex.numbers import fits_amount

__all__ = [
    "DEFAULT_BASE_URL",
    "Kline",
    "MAX_BODY_BYTES",
    "TikiClient",
    "UpstreamDataError",
    "UpstreamError",
    "UpstreamRejected",
    "UpstreamUnavailable",
]

DEFAULT_BASE_URL = "https://api.tiki.vn"

# The exchange sits behind a CDN that treats bare scripted clients with suspicion, so the
# client presents itself the way the exchange's own web app does.
BROWSER_HEADERS = {
    "Accept": "application/json, text/plain, */*",
    # A browser's encodings but Brotli and zstd: the client decodes the body itself, piece
    # by piece, so that the deadline and the size cap hold for compressed answers too.
    "Accept-Encoding": "gzip, deflate",
    "Accept-Language": "vi-VN,vi;q=0.9,en;q=0.8",
    "Origin": "https://exchange.tiki.vn",
    "Referer": "https://exchange.tiki.vn/",
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
    ),
}

_RETRYABLE_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

# The longest answer we read. An answer holds at most a row per minute of the window asked
# for: crawler.chunk_minutes, 1000 by default (Peatio's own cap, 10,000 points, applies only
# to requests without both time_from and time_to). Sized for 10,000 rows, for room above the
# default chunk: the widest row DECIMAL(36,18) stores is about 200 bytes (a 10-digit ts and
# five values of 37 characters) and real ASA/XU rows about 50, so 10,000 wide rows make 2 MB
# and 4 MiB is twice that, yet still a bound on what one answer holds in memory unparsed.
MAX_BODY_BYTES = 4 * 1024 * 1024
_CAP_HINT = " (crawler.chunk_minutes sets how many rows one request asks for)"
_READ_BYTES = 64 * 1024  # per read; a read returns what one socket read brought, maybe less
_DETAIL_BYTES = 800  # of an error answer: the 200 characters of a message, 4 UTF-8 bytes each

log = logging.getLogger("stockex.tiki")


class Kline(NamedTuple):
    """One closed one-minute candle as the exchange reported it; prices are exact.

    A named tuple (cheap to build for a year of minutes); ``kline[1:]`` is its values.
    """

    ts: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


def _iso(ts: int, tz: tzinfo) -> str:
    """``ts`` in ``tz``: ``2024-07-01T18:24:00Z`` in UTC, ``2024-07-02T01:24:00+07:00`` else."""
    if tz is UTC:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(ts, tz).isoformat()


class UpstreamError(Exception):
    """Base of every failure to obtain k-lines from the exchange.

    ``timezone`` is the zone its times are written in: UTC, or the client's ``timezone``
    once :meth:`TikiClient.fetch_klines` raises it (the crawler's configured one).
    """

    timezone: tzinfo = UTC


class UpstreamUnavailable(UpstreamError):
    """Retryable failures (connection, timeout, 429, 5xx) outlasted every attempt."""

    def __init__(
        self, market: str, time_from: int, time_to: int, attempts: int, last_failure: str
    ) -> None:
        self.market = market
        self.time_from = time_from
        self.time_to = time_to
        self.attempts = attempts
        self.last_failure = last_failure
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.market} [{_iso(self.time_from, self.timezone)} .. "
            f"{_iso(self.time_to, self.timezone)}]: upstream unavailable after "
            f"{self.attempts} attempt(s); last: {self.last_failure}"
        )


class UpstreamRejected(UpstreamError):
    """The exchange refused the request itself (a 4xx other than 429); retrying won't help."""

    def __init__(self, status: int | None, url: str, detail: str = "") -> None:
        self.status = status
        self.url = url
        what = f"HTTP {status}" if status is not None else "invalid request"
        super().__init__(f"{what} from {url}" + (f": {detail}" if detail else ""))


class UpstreamDataError(UpstreamError):
    """The answer is not a valid k-line array; ``ts`` is None when no row is to blame."""

    def __init__(self, market: str, ts: int | None, problem: str) -> None:
        self.market = market
        self.ts = ts
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.market
        if self.ts is not None:
            where += f" ts={self.ts} ({_iso(self.ts, self.timezone)})"
        return f"{where}: {self.problem}"


_FIELDS = ("open", "high", "low", "close", "volume")
# A value DECIMAL(36,18) does not store (stockex.numbers.fits_amount) would be refused by the
# database on every run, stalling the crawl at that minute as a database error.
# 19 digits in a row (10^18 or more, or 19 decimal places) or an exponent: only such an answer
# can hold a value that does not fit, and takes the row-by-row path that checks each exactly.
# (Digits made nines, then one substring search: a regular expression took 15 times longer.)
_DIGITS_AS_NINES = bytes.maketrans(b"012345678", b"999999999")
_NINETEEN_DIGITS = b"9" * 19


def _maybe_too_wide(body: bytes) -> bool:
    return (_NINETEEN_DIGITS in body.translate(_DIGITS_AS_NINES)
            or b"e" in body or b"E" in body)


def _to_decimal(market: str, ts: int, name: str, value: Any) -> Decimal:
    # Exact types only: bool is an int subclass, and `true` must never pass for 1.
    if type(value) is Decimal:
        number = value
    elif type(value) is int:
        number = Decimal(value)
    else:
        raise UpstreamDataError(market, ts, f"{name} {value!r:.40} is not a number")
    if not number.is_finite():
        raise UpstreamDataError(market, ts, f"{name} {number} is not finite")
    if number < 0:
        raise UpstreamDataError(market, ts, f"{name} {number} is negative")
    if not fits_amount(number):
        raise UpstreamDataError(
            market, ts, f"{name} {number:.40} does not fit DECIMAL(36,18) (below 10^18, at most "
            "18 decimal places)")
    return number


def _parse_row(market: str, row: Any, time_from: int, time_to: int) -> Kline:
    """Validate one ``[ts, open, high, low, close, volume]`` row; raise UpstreamDataError."""
    if type(row) is not list:
        raise UpstreamDataError(market, None, f"row is not an array: {row!r:.80}")
    raw_ts = row[0] if row else None
    ts = raw_ts if type(raw_ts) is int else None
    if len(row) != 6:
        raise UpstreamDataError(market, ts, f"row has {len(row)} fields, expected 6")
    if ts is None:
        raise UpstreamDataError(market, None, f"ts {raw_ts!r:.40} is not an integer")
    if ts % 60:
        raise UpstreamDataError(market, ts, "ts is not a multiple of 60")
    if not time_from <= ts <= time_to:
        raise UpstreamDataError(market, ts, f"ts outside the window [{time_from}, {time_to}]")
    o, h, lo, c, v = [_to_decimal(market, ts, n, x) for n, x in zip(_FIELDS, row[1:], strict=True)]
    if h < max(o, c):
        raise UpstreamDataError(market, ts, f"high {h} < max(open, close) {max(o, c)}")
    if lo > min(o, c):
        raise UpstreamDataError(market, ts, f"low {lo} > min(open, close) {min(o, c)}")
    if lo > h:
        raise UpstreamDataError(market, ts, f"low {lo} > high {h}")
    return Kline(ts=ts, open=o, high=h, low=lo, close=c, volume=v)


def _valid_rows(data: list[Any], time_from: int, time_to: int) -> list[Kline] | None:
    """The common case, an answer of valid rows in strictly ascending ``ts``, checked column
    by column; None when anything is off (then :func:`_parse_row`, row by row, names the
    first problem, and repeated or unordered minutes are sorted out).

    The same rules as :func:`_parse_row`, written for speed: every backfilled minute goes
    through here.
    """
    if not data:
        return []
    if set(map(type, data)) != {list} or set(map(len, data)) != {6}:
        return None
    ts, opens, highs, lows, closes, volumes = zip(*data, strict=True)
    if set(map(type, ts)) != {int} or not time_from <= ts[0] <= ts[-1] <= time_to:
        return None
    if any(map(_MINUTE.__rmod__, ts)) or not all(map(lt, ts, ts[1:])):
        return None  # (ts % 60 for each ts), ascending
    numbers = (opens, highs, lows, closes, volumes)
    # exact types: bool is an int subclass and must not pass for 1
    if not set(map(type, chain(*numbers))) <= _NUMBER_TYPES:
        return None
    opens, highs, lows, closes, volumes = [list(map(Decimal, column)) for column in numbers]
    if not all(map(Decimal.is_finite, chain(opens, highs, lows, closes, volumes))):
        return None
    # low <= open, close <= high, so low >= 0 makes every price non-negative
    if (min(lows) < 0 or min(volumes) < 0 or not all(map(ge, highs, opens))
            or not all(map(ge, highs, closes)) or not all(map(le, lows, opens))
            or not all(map(le, lows, closes))):
        return None
    return list(map(Kline._make, zip(ts, opens, highs, lows, closes, volumes, strict=True)))


_MINUTE = 60
_NUMBER_TYPES = frozenset({int, Decimal})


_HTML_TITLE = re.compile(rb"<title[^>]*>\s*(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)


_TITLE_BYTES = 8 * _DETAIL_BYTES  # an HTML page's title is in its head, past its styles


def _html_page(body: bytes) -> str | None:
    """``an HTML page titled '...'`` when ``body`` starts like one: a CDN's bot check or
    error page, a maintenance notice, a web app at a wrong ``tiki.base_url``."""
    title = _HTML_TITLE.search(body[:_TITLE_BYTES])
    if title is None:
        return None
    text = " ".join(title.group(1).decode("utf-8", errors="replace").split())
    return f"an HTML page titled {text[:80]!r}"


def _what_came(body: bytes) -> str:
    """An answer that is not JSON (maybe with 200), for its error: an HTML page by its
    title, anything else by its start."""
    return _html_page(body) or f"{body[:80]!r}"


def parse_klines(market: str, body: bytes, time_from: int, time_to: int) -> list[Kline]:
    """Parse and validate a whole answer; sorted by ts, a repeated ts keeps its last row.

    Numbers are read straight into ``int``/``Decimal`` so no float ever rounds a price.
    Raises UpstreamDataError on the first problem, rejecting the whole answer.
    """
    try:
        # parse_constant turns NaN/Infinity into non-finite Decimals that the row check names.
        data = json.loads(body, parse_float=Decimal, parse_int=int, parse_constant=Decimal)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise UpstreamDataError(
            market, None, f"body is not valid JSON ({exc}): {_what_came(body)}") from exc
    if not isinstance(data, list):
        raise UpstreamDataError(market, None, f"body is not a JSON array: {body[:80]!r}")
    valid = None if _maybe_too_wide(body) else _valid_rows(data, time_from, time_to)
    if valid is not None:
        return valid
    by_ts: dict[int, Kline] = {}
    for row in data:
        kline = _parse_row(market, row, time_from, time_to)
        by_ts[kline.ts] = kline
    return [by_ts[ts] for ts in sorted(by_ts)]


class _DeadlinePassed(Exception):
    """An attempt's answer was not complete by its deadline."""


class _Undecodable(Exception):
    """A body in an encoding we did not ask for, or whose gzip/deflate stream is broken."""


#: zlib's window bits per Content-Encoding: gzip's header and trailer, deflate's zlib ones.
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
               "deflate": zlib.MAX_WBITS}


def _content_encoding(response: requests.Response) -> str:
    """The body's Content-Encoding, lower case; ``identity`` when there is none."""
    return response.headers.get("Content-Encoding", "").strip().lower() or "identity"


def _decoder(response: requests.Response) -> Any:
    """A zlib decompressor for the body's Content-Encoding; None for an unencoded body."""
    encoding = _content_encoding(response)
    if encoding == "identity":
        return None
    if encoding not in _ZLIB_WBITS:
        raise _Undecodable(f"Content-Encoding {encoding!r} was not asked for")
    return zlib.decompressobj(_ZLIB_WBITS[encoding])


def _read_up_to(
    response: requests.Response, limit: int, deadline: float, clock: Callable[[], float]
) -> bytes:
    """The first ``limit`` bytes of a streamed body (decoded), fewer only if it ends first.

    The raw body is read with ``read1``, one socket read per call, and decoded here, never
    more than ``limit`` bytes (zlib's ``max_length``, so a compression bomb stops at the
    cap). ``deadline`` is checked after every read that did not finish the body: a body
    dripped a byte at a time, compressed or not, is given up at the deadline plus at most
    one read timeout. (urllib3's own decoding would go on reading while the decoder gives
    nothing back.) Raises _DeadlinePassed, _Undecodable, or the requests exception that
    requests' own body reading (``iter_content``) would raise.
    """
    decoder = _decoder(response)
    chunks: list[bytes] = []
    received = 0
    try:
        while received < limit:
            want = _READ_BYTES if decoder is not None else min(_READ_BYTES, limit - received)
            raw = response.raw.read1(want, decode_content=False)
            if not raw:
                if decoder is not None and not decoder.eof:
                    raise _Undecodable("the compressed body ends early")
                break
            chunk = raw if decoder is None else decoder.decompress(raw, limit - received)
            chunks.append(chunk)
            received += len(chunk)
            if received < limit and clock() > deadline:
                raise _DeadlinePassed
    except zlib.error as exc:
        raise _Undecodable(f"the body does not decode: {exc}") from exc
    except ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except ReadTimeoutError as exc:
        raise requests.ConnectionError(exc) from exc
    except SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    return b"".join(chunks)


def _content_length(response: requests.Response) -> int | None:
    """The declared length of the body as we will read it; None if unknown or compressed
    (then Content-Length counts the compressed bytes, and the decoded ones are counted
    while they are read)."""
    if _content_encoding(response) != "identity":
        return None
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def _error_detail(
    response: requests.Response, deadline: float, clock: Callable[[], float]
) -> str:
    """The start of an error answer, for the message only: the status decides what happens,
    so a body that is late or breaks off just leaves the detail short."""
    try:
        head = _read_up_to(response, _DETAIL_BYTES, deadline, clock)
    except (_DeadlinePassed, _Undecodable, requests.RequestException):
        return ""
    try:
        text = head.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = head.decode("utf-8", errors="replace")
    return text[:200]


def _failure_page(
    response: requests.Response, deadline: float, clock: Callable[[], float]
) -> str:
    """`` (an HTML page titled '...')`` for a retried answer (5xx, 429) that is one, else
    "": a CDN's bot check answers 503 and its own outages 52x, which the status alone does
    not tell apart. Read for the message only, as :func:`_error_detail` reads."""
    try:
        head = _read_up_to(response, _TITLE_BYTES, deadline, clock)
    except (_DeadlinePassed, _Undecodable, requests.RequestException):
        return ""
    page = _html_page(head)
    return f" ({page})" if page else ""


class TikiClient:
    """Fetches one-minute k-lines from Tiki-Exchange (or a stand-in at ``base_url``).

    ``timeout`` bounds each socket read and each attempt as a whole: an answer whose body is
    not complete ``timeout`` seconds after the request began is given up (checked between
    reads, so one more read timeout at most). Only bounded per read, as a watchdog thread
    would be needed to cut them short: the head of the answer (status line and headers), and
    the body of a redirect, which requests reads in full before it follows the redirect.

    ``sleep`` and ``clock`` (monotonic seconds) are injectable so tests can record backoff
    delays instead of waiting them out, and move time past a deadline.
    A ``session`` passed in stays the caller's: :meth:`close` only closes a session the
    client created itself. ``timezone`` is the zone the errors it raises write their times
    in (the crawler passes its configured one; UTC by default).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        *,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 300.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        timezone: tzinfo = UTC,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if timeout <= 0 or backoff_base < 0 or backoff_max < 0 or retry_after_max < 0:
            raise ValueError("timeout must be positive and backoff delays non-negative")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self.max_body_bytes = max_body_bytes
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._sleep = sleep
        self._clock = clock
        self._jitter = random.Random()  # noqa: S311 - jitter spreads retries, not a secret
        self.timezone = timezone

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> TikiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def klines_url(self, market: str) -> str:
        return f"{self.base_url}/rally/markets/{quote(market, safe='')}/klines"

    def fetch_klines(self, market: str, time_from: int, time_to: int) -> list[Kline]:
        """Closed one-minute k-lines of ``market`` with ``time_from <= ts <= time_to``.

        May return fewer rows than the window holds (the exchange caps answers) and nothing
        for minutes without trades. Raises UpstreamUnavailable, UpstreamRejected or
        UpstreamDataError as described in the module docstring, with times in ``timezone``.
        """
        try:
            return self._fetch_klines(market, time_from, time_to)
        except UpstreamError as exc:
            exc.timezone = self.timezone
            raise

    def _fetch_klines(self, market: str, time_from: int, time_to: int) -> list[Kline]:
        if time_from > time_to:
            raise ValueError(f"time_from {time_from} is after time_to {time_to}")
        url = self.klines_url(market)
        params = {"period": 1, "time_from": time_from, "time_to": time_to}
        last_failure = ""
        for attempt in range(1, self.max_attempts + 1):
            retry_after: float | None = None
            deadline = self._clock() + self.timeout
            try:
                # Streamed, so that the body is read against the deadline and the size cap;
                # `with` closes the response, which a streamed one needs to free the connection.
                with self._session.get(
                    url, params=params, headers=BROWSER_HEADERS, timeout=self.timeout,
                    stream=True,
                ) as response:
                    status = response.status_code
                    if status < 400:
                        body = self._read_body(market, response, deadline)
                        return parse_klines(market, body, time_from, time_to)
                    if status != 429 and status < 500:
                        detail = _error_detail(response, deadline, self._clock)
                        raise UpstreamRejected(status, response.url, detail)
                    last_failure = f"HTTP {status}" + _failure_page(response, deadline,
                                                                     self._clock)
                    if status == 429:
                        retry_after = _retry_after_seconds(response)
            except _DeadlinePassed:
                last_failure = f"deadline: body not received within {float(self.timeout)} s"
            except _RETRYABLE_EXCEPTIONS as exc:
                last_failure = f"{type(exc).__name__}: {exc}"
            except requests.RequestException as exc:  # bad URL and the like: a config error
                raise UpstreamRejected(None, url, f"{type(exc).__name__}: {exc}") from exc
            if attempt < self.max_attempts:
                delay = self._backoff(attempt, retry_after)
                log.warning(
                    "tiki %s [%d..%d] attempt %d/%d failed (%s); retrying in %.2fs",
                    market,
                    time_from,
                    time_to,
                    attempt,
                    self.max_attempts,
                    last_failure,
                    delay,
                )
                self._sleep(delay)
        raise UpstreamUnavailable(market, time_from, time_to, self.max_attempts, last_failure)

    def _read_body(self, market: str, response: requests.Response, deadline: float) -> bytes:
        """The whole body of a k-line answer; UpstreamDataError past ``max_body_bytes``."""
        cap = self.max_body_bytes
        declared = _content_length(response)
        if declared is not None and declared > cap:
            raise UpstreamDataError(market, None, f"body of {declared} bytes (Content-Length) "
                                    f"is over the {cap}-byte cap{_CAP_HINT}")
        try:
            body = _read_up_to(response, cap + 1, deadline, self._clock)
        except _Undecodable as exc:
            raise UpstreamDataError(market, None, str(exc)) from exc
        if len(body) > cap:
            raise UpstreamDataError(market, None, f"body is over the {cap}-byte cap{_CAP_HINT}")
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed ``attempt``: Retry-After if given (up to
        ``retry_after_max``: a rate limiter asking for two minutes gets them; retrying sooner
        is what gets a client banned), else full jitter up to ``backoff_max``."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return self._jitter.uniform(0, ceiling)


def _retry_after_seconds(response: requests.Response) -> float | None:
    # Only the delta-seconds form: Peatio's rate limiter never sends an HTTP date.
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if seconds >= 0 and seconds == seconds else None
