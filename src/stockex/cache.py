"""The cache: Redis when ``redis.url`` is set, an in-process TTL cache otherwise.

Every cache key and its invalidation lives in this module so that what is cached, for how
long, and what clears it can be read in one place. A Redis outage never fails a request:
reads miss, writes are dropped, a warning is logged once per outage, and ``ping`` reports
the problem so ``/ready`` can say so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger("stockex.cache")

KEY_PREFIX = "stockex:"
#: After Redis timed out (hung, or unreachable across the network) it is not asked again for
#: this long: each call would otherwise wait out its 0.5 s timeout, a second or more per
#: request, which with sync workers is an outage of its own. A refused connection fails at
#: once and pauses nothing; ``ping`` (``/ready``) always asks, and an answer ends the pause.
REDIS_PAUSE_SECONDS = 5.0


class LocalCache:
    """A small thread-safe TTL cache for single-process setups (the embedded default).

    Bounded in entries and in bytes: a candle page can be 0.7 MB (5000 candles), and any
    client can ask for pages under as many keys as it likes (``time_to`` to the second), so
    10,000 entries alone could hold gigabytes in every worker.
    """

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = 64 * 1024 * 1024):
        self._data: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._data[key]
                self._bytes -= len(entry[1])
                return None
            return entry[1]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            if len(self._data) >= self._max or self._bytes + len(value) > self._max_bytes:
                self._data.clear()  # crude but bounded; the database is always the truth
                self._bytes = 0
            if len(value) > self._max_bytes:
                return
            self._data[key] = (self._clock() + ttl, value)
            self._bytes += len(value)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                entry = self._data.pop(key, None)
                if entry is not None:
                    self._bytes -= len(entry[1])


class Cache:
    """Byte values under namespaced keys, with TTLs; see the module docstring for failures.

    ``on_down(exc)`` is called when Redis starts failing (once per outage) and ``on_up()``
    when it answers again; the API uses them to raise and resolve an alert. They must not
    block or raise.
    """

    def __init__(
        self,
        redis_url: str = "",
        *,
        on_down: Callable[[Exception], None] | None = None,
        on_up: Callable[[], None] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.on_down = on_down
        self.on_up = on_up
        self.local = LocalCache()
        self.redis: redis.Redis | None = None
        if redis_url:
            self.redis = redis.Redis.from_url(
                redis_url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=30
            )
        self._redis_down = False
        # The outage is Redis refusing writes (full, read-only, failing to save) rather than
        # not answering: a read that succeeds then does not mean it works again.
        self._refusing_writes = False
        # Generation keys this process has used, and those whose bump may have been lost
        # (Redis failed meanwhile): these are deleted on its next contact with Redis.
        self._generations: set[str] = set()
        self._lost_bumps: set[str] = set()
        self.pause_seconds = REDIS_PAUSE_SECONDS
        self._paused_until = 0.0  # time.monotonic() until which Redis is not asked

    @property
    def redis_paused(self) -> bool:
        """Redis timed out less than ``pause_seconds`` ago: callers skip it meanwhile."""
        return self._paused_until > 0 and time.monotonic() < self._paused_until

    def redis_failed(self, exc: Exception) -> None:
        """Another user of :attr:`redis` (the token revocations) met ``exc``: the same outage."""
        self._note_down(exc)

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "local"

    @property
    def refusing_writes(self) -> bool:
        """Redis answered the last failed write with an error (full, read-only) and has taken
        none since: it answers pings, yet the cache still runs without it."""
        return self._redis_down and self._refusing_writes

    def get(self, key: str) -> bytes | None:
        if self.redis is None:
            return self.local.get(KEY_PREFIX + key)
        if self.redis_paused:
            return None
        try:
            value = self.redis.get(KEY_PREFIX + key)
        except redis.RedisError as exc:
            self._note_down(exc)
            return None
        self._note_up(wrote=False)
        return value  # type: ignore[return-value]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        if self.redis is None:
            self.local.set(KEY_PREFIX + key, value, ttl)
            return
        if self.redis_paused:
            return
        try:
            self.redis.set(KEY_PREFIX + key, value, px=max(1, int(ttl * 1000)))
        except redis.RedisError as exc:
            self._note_down(exc)
            return
        self._note_up(wrote=True)

    def delete(self, *keys: str) -> None:
        names = [KEY_PREFIX + k for k in keys]
        if self.redis is None:
            self.local.delete(*names)
            return
        if self.redis_paused:
            return
        try:
            self.redis.delete(*names)
        except redis.RedisError as exc:
            self._note_down(exc)

    def close(self) -> None:
        """Close the Redis connections (the in-process cache needs nothing)."""
        if self.redis is not None:
            self.redis.close()
            self.redis.connection_pool.disconnect()

    def generation(self, name: str, ttl: float) -> str | None:
        """The current token of generation ``name`` (a new one when there is none yet, or it
        was evicted or retired). None when Redis cannot give or record one: answers keyed on
        it must then not be cached, as their invalidation could not be relied on."""
        if self.redis is None:
            value = self.local.get(KEY_PREFIX + name)
            if value is None:
                value = _token()
                self.local.set(KEY_PREFIX + name, value, ttl)
            return value.decode()
        key = KEY_PREFIX + name
        self._generations.add(key)
        if self.redis_paused:
            return None
        try:
            self._delete_lost_bumps()
            value = self.redis.get(key)
            if value is None:  # never a fixed token: entries cached under an old one may live
                self.redis.set(key, _token(), px=max(1, int(ttl * 1000)), nx=True)
                value = self.redis.get(key)
        except redis.RedisError as exc:
            self._note_down(exc)
            return None
        self._note_up(wrote=False)
        return None if value is None else value.decode()  # type: ignore[union-attr]

    def bump_generation(self, name: str, ttl: float) -> None:
        """Retire every answer keyed on generation ``name`` (see :meth:`generation`).

        When Redis refuses the new token (full: maxmemory with noeviction) the token is
        deleted instead, which a full Redis still allows; the next reader then starts a new
        one, or caches nothing while it cannot. When Redis cannot be reached the deletion is
        retried on this process's next contact with Redis, before it reads any generation.
        Every process that sees Redis fail does the same with the generations it has used,
        since another process's bump may have been lost meanwhile (and a Redis restarted
        from its append-only file comes back with the old tokens and answers).
        """
        if self.redis is None:
            self.local.set(KEY_PREFIX + name, _token(), ttl)
            return
        key = KEY_PREFIX + name
        self._generations.add(key)
        if self.redis_paused:
            self._lost_bumps.add(key)
            return
        try:
            self.redis.set(key, _token(), px=max(1, int(ttl * 1000)))
        except redis.RedisError as exc:
            self._note_down(exc)
            if self.redis_paused:  # it timed out: a DEL now would wait out another timeout
                self._lost_bumps.add(key)
                return
            try:
                self.redis.delete(key)
            except redis.RedisError:
                self._lost_bumps.add(key)
            return
        self._note_up(wrote=True)

    def _delete_lost_bumps(self) -> None:
        """Delete the generations whose bump was lost; raises ``redis.RedisError``."""
        if self._lost_bumps and self.redis is not None:
            lost = list(self._lost_bumps)
            self.redis.delete(*lost)
            self._lost_bumps.difference_update(lost)

    def ping(self) -> None:
        """Raise ``redis.RedisError`` when Redis is configured and does not answer."""
        if self.redis is not None:
            self.redis.ping()
            self._paused_until = 0.0

    def _note_down(self, exc: Exception) -> None:
        if isinstance(exc, redis.TimeoutError):
            self._paused_until = time.monotonic() + self.pause_seconds
        if not self._redis_down:
            log.warning("redis unavailable, serving without cache: %s", exc)
            self._redis_down = True
            self._lost_bumps.update(self._generations)
            # an error reply (OOM, READONLY, MISCONF): Redis answers, but refuses writes
            self._refusing_writes = isinstance(exc, redis.ResponseError)
            if self.on_down is not None:
                self.on_down(exc)

    def _note_up(self, *, wrote: bool) -> None:
        """Redis answered a read (``wrote=False``) or took a write."""
        if self._redis_down and (wrote or not self._refusing_writes):
            log.warning("redis is back")
            self._redis_down = False
            if self.on_up is not None:
                self.on_up()
        if self._lost_bumps:
            try:
                self._delete_lost_bumps()
            except redis.RedisError as exc:
                log.warning("could not retire lost cache generations: %s", exc)


# --------------------------------------------------------------------------- keys

BOOK_GENERATION_TTL = 24 * 3600.0


def _token() -> bytes:
    return str(time.time_ns()).encode()


def book_generation(cache: Cache, market_id: str) -> str | None:
    """A token that changes whenever the market's order book or trades change.

    Depth and trades answers put it in their cache keys, so one bump invalidates every cached
    variant (any ``limit``) at once, in Redis shared by all API processes. None: Redis cannot
    tell, and those answers are not cached (:meth:`Cache.generation`).
    """
    return cache.generation(f"book-gen:{market_id}", BOOK_GENERATION_TTL)


def invalidate_book(cache: Cache, market_id: str) -> None:
    """Call after a placement, cancel or fill has COMMITTED (never inside the transaction)."""
    cache.bump_generation(f"book-gen:{market_id}", BOOK_GENERATION_TTL)


# --------------------------------------------------------------------------- market data
#
# Candles: the key holds the market's candle revision (bumped in the database whenever a
# settled bucket changes, see stockex.candles) and every query parameter, with "now" for an
# open-ended time_to. An answer whose buckets have all settled is kept for a day; one that can
# touch the open bucket for at most one crawl interval, so a newly crawled minute shows up in
# the open bucket no later than one interval after it was stored.
# Ticker: at most one crawl interval.
# Depth and trades: keyed on book_generation, so a committed placement, cancel or fill
# (invalidate_book) retires every cached variant at once; the TTL only bounds memory. Only
# in Redis: each process's own cache would keep its own generation, which a placement made
# through another process (gunicorn or granian worker) does not bump, so without Redis they
# are not cached.
# Every answer holds *_local times: its key names the configured timezone, so processes
# configured with another one (during a rolling restart after a change) never share it.

CANDLES_SETTLED_TTL = 24 * 3600.0
BOOK_TTL = 300.0


def candles_key(
    market_id: str,
    timezone: str,
    revision: int,
    period: int,
    time_from: int | None,
    time_to: int | None,
    limit: int,
    fmt: str,
) -> str:
    start = "-" if time_from is None else str(time_from)
    end = "now" if time_to is None else str(time_to)
    return f"candles:{market_id}:{timezone}:r{revision}:{period}:{start}:{end}:{limit}:{fmt}"


def candles_ttl(settled: bool, crawl_interval_seconds: float) -> float:
    return CANDLES_SETTLED_TTL if settled else open_data_ttl(crawl_interval_seconds)


def open_data_ttl(crawl_interval_seconds: float) -> float:
    """How long an answer that the next crawl can change may be served from the cache."""
    return max(0.5, float(crawl_interval_seconds))


def ticker_key(market_id: str, timezone: str) -> str:
    return f"ticker:{market_id}:{timezone}"


def _shared_book_generation(cache: Cache, market_id: str) -> str | None:
    """The book generation when every process shares it (in Redis), else None."""
    return None if cache.redis is None else book_generation(cache, market_id)


def depth_key(cache: Cache, market_id: str, timezone: str, limit: int) -> str | None:
    generation = _shared_book_generation(cache, market_id)
    if generation is None:
        return None
    return f"depth:{market_id}:{timezone}:g{generation}:{limit}"


def trades_key(
    cache: Cache,
    market_id: str,
    timezone: str,
    limit: int,
    time_from: int | None,
    time_to: int | None,
    before_id: int | None,
) -> str | None:
    generation = _shared_book_generation(cache, market_id)
    if generation is None:
        return None
    start = "-" if time_from is None else str(time_from)
    end = "now" if time_to is None else str(time_to)
    before = "-" if before_id is None else str(before_id)
    return f"trades:{market_id}:{timezone}:g{generation}:{start}:{end}:{limit}:{before}"


def cached(cache: Cache, key: str | None, ttl: float, compute: Callable[[], bytes]) -> bytes:
    """The cached bytes under ``key``, else ``compute()``'s, stored for ``ttl`` seconds.
    With Redis down, or no ``key`` (its generation unknown), this is just ``compute()``."""
    if key is None:
        return compute()
    value = cache.get(key)
    if value is not None:
        return value
    value = compute()
    cache.set(key, value, ttl)
    return value
