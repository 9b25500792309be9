"""stockex.cache: Redis and in-process backends, book invalidation, outages."""

from __future__ import annotations

import pytest

from stockex.cache import Cache, LocalCache, book_generation, invalidate_book


@pytest.fixture(params=["local", "redis"])
def cache(request: pytest.FixtureRequest) -> Cache:
    if request.param == "local":
        return Cache("")
    return Cache(request.getfixturevalue("redis_url"))


def test_set_get_delete(cache: Cache) -> None:
    cache.set("k", b"v", 60)
    assert cache.get("k") == b"v"
    cache.delete("k")
    assert cache.get("k") is None


def test_redis_keys_are_really_in_redis(redis_url: str) -> None:
    import redis

    Cache(redis_url).set("probe", b"1", 60)
    assert redis.Redis.from_url(redis_url).get("stockex:probe") == b"1"


def test_book_generation_changes_on_invalidate(cache: Cache) -> None:
    before = book_generation(cache, "asaxu")
    other = book_generation(cache, "btcvnd")
    invalidate_book(cache, "asaxu")
    after = book_generation(cache, "asaxu")
    assert after != before
    assert before is not None and after == book_generation(cache, "asaxu")
    assert book_generation(cache, "btcvnd") == other  # another market's answers stay


def test_local_ttl_expires() -> None:
    now = [100.0]
    local = LocalCache(clock=lambda: now[0])
    local.set("a", b"1", 5)
    assert local.get("a") == b"1"
    now[0] += 6
    assert local.get("a") is None


def test_the_in_process_cache_is_bounded_in_bytes() -> None:
    # Any client can ask for 0.7 MB candle pages under new keys (time_to to the second):
    # 10,000 of them were 7 GB in each worker.
    cache = Cache("")
    page = b"x" * 700_000
    for n in range(200):
        cache.set(f"candles:{n}", page, 86400)
    held = sum(len(value) for _, value in cache.local._data.values())
    assert 0 < held <= 64 * 1024 * 1024
    assert cache.get("candles:199") == page  # the newest is there

    local = LocalCache(max_bytes=10)
    local.set("a", b"12345", 60)
    local.set("a", b"123456", 60)  # replacing counts the new value only
    local.set("b", b"1234", 60)
    assert (local.get("a"), local.get("b")) == (b"123456", b"1234")
    local.delete("a")
    local.set("c", b"123456", 60)
    assert (local.get("b"), local.get("c")) == (b"1234", b"123456")
    local.set("d", b"x" * 11, 60)  # larger than the whole cache: not kept
    assert local.get("d") is None


def test_redis_down_never_raises() -> None:
    cache = Cache("redis://127.0.0.1:1/0")
    cache.set("k", b"v", 60)
    assert cache.get("k") is None
    cache.delete("k")
    with pytest.raises(Exception):  # noqa: B017 - ping is how /ready learns about it
        cache.ping()
