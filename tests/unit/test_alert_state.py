"""Cooldown and open-incident bookkeeping, in the process (no I/O)."""

from __future__ import annotations

from stockex.alert_state import LocalAlertState, split_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_occurrence_sends_repeats_are_counted_into_the_next_message() -> None:
    clock = Clock()
    state = LocalAlertState(clock)
    first = state.record("api GET /x#E", "api GET /x", 1.0, cooldown=300)
    assert (first.send, first.suppressed) == (True, 0)
    for _ in range(99):
        assert not state.record("api GET /x#E", "api GET /x", 2.0, cooldown=300).send
    clock.now += 299.9
    assert not state.record("api GET /x#E", "api GET /x", 3.0, cooldown=300).send
    clock.now += 0.2
    later = state.record("api GET /x#E", "api GET /x", 4.0, cooldown=300)
    assert (later.send, later.suppressed, later.occurrences) == (True, 100, 102)
    # the count starts again after each message
    clock.now += 301
    assert state.record("api GET /x#E", "api GET /x", 5.0, cooldown=300).suppressed == 0


def test_fingerprints_have_their_own_cooldown() -> None:
    state = LocalAlertState(Clock())
    assert state.record("s#A", "s", 1.0, 300).send
    assert state.record("s#B", "s", 1.0, 300).send
    assert state.record("t#A", "t", 1.0, 300).send
    assert not state.record("s#A", "s", 1.0, 300).send


def test_zero_cooldown_sends_everything() -> None:
    state = LocalAlertState(Clock())
    assert all(state.record("s#A", "s", 1.0, 0).send for _ in range(5))


def test_resolve_by_source_closes_all_of_its_incidents_once() -> None:
    state = LocalAlertState(Clock())
    state.record("crawler asaxu#Timeout", "crawler asaxu", 10.0, 300)
    state.record("crawler asaxu#Timeout", "crawler asaxu", 11.0, 300)
    state.record("crawler asaxu#BadData", "crawler asaxu", 12.0, 300)
    state.record("crawler btcvnd#Timeout", "crawler btcvnd", 12.0, 300)
    closed = sorted(state.resolve("crawler asaxu"), key=lambda c: c.fingerprint)
    assert [(c.fingerprint, c.first_seen, c.occurrences, c.suppressed) for c in closed] == [
        ("crawler asaxu#BadData", 12.0, 1, 0),
        ("crawler asaxu#Timeout", 10.0, 2, 1),
    ]
    assert state.resolve("crawler asaxu") == []
    # the other market is still open; after resolving, a new failure alerts at once
    assert [c.fingerprint for c in state.resolve("crawler btcvnd#Timeout")] == [
        "crawler btcvnd#Timeout"
    ]
    assert state.record("crawler asaxu#Timeout", "crawler asaxu", 20.0, 300).send


def test_resolve_one_fingerprint_leaves_the_others_open() -> None:
    state = LocalAlertState(Clock())
    state.record("database#A", "database", 1.0, 300)
    state.record("database#B", "database", 1.0, 300)
    assert [c.fingerprint for c in state.resolve("database#A")] == ["database#A"]
    assert [c.fingerprint for c in state.resolve("database")] == ["database#B"]


def test_split_key() -> None:
    assert split_key("api GET /x#ValueError") == ("api GET /x", "api GET /x#ValueError")
    assert split_key("redis") == ("redis", None)


def test_bookkeeping_is_bounded() -> None:
    clock = Clock()
    state = LocalAlertState(clock)
    for i in range(5000):
        clock.now += 1
        state.record(f"api GET /r{i}#E", f"api GET /r{i}", 1.0, 300)
    total = sum(len(v) for v in state._open.values())
    assert total <= 2000
    # the newest ones are kept
    assert not state.record("api GET /r4999#E", "api GET /r4999", 1.0, 300).send
