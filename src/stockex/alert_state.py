"""Who has been told what: the cooldown and open-incident bookkeeping behind :mod:`stockex.alerts`.

An *incident* is one fingerprint (``"<source>#<error type>"``) that has failed and not been
resolved. :meth:`record` counts an occurrence and says whether a message is due — the first
occurrence, and then at most one per cooldown, carrying how many repeats were held back since
the previous message. :meth:`resolve` closes the open incidents of a source (or one fingerprint)
and returns them so a "resolved" message can say how long and how often it failed.

:class:`LocalAlertState` keeps this in the process. :class:`RedisAlertState` keeps it in Redis
(atomic Lua scripts), so that every gunicorn worker, the crawler and each Airflow task process
(a new process per try) share one cooldown and one set of open incidents; while Redis is
unreachable it carries on with the local state and says so once in the log.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

log = logging.getLogger("stockex.alerts")

KEY_PREFIX = "stockex:alerts:"
#: Open incidents nobody resolves (a bug in one route) are forgotten after this long.
INCIDENT_TTL_SECONDS = 7 * 24 * 3600
MAX_LOCAL_INCIDENTS = 2000


@dataclass(frozen=True)
class Decision:
    """Whether to send now and how many repeats were held back before this one."""

    send: bool
    suppressed: int
    occurrences: int


@dataclass(frozen=True)
class ClosedIncident:
    fingerprint: str
    first_seen: float
    occurrences: int
    suppressed: int


def split_key(key: str) -> tuple[str, str | None]:
    """``"source#Type"`` -> (source, fingerprint); ``"source"`` -> (source, None)."""
    if "#" in key:
        return key.rsplit("#", 1)[0], key
    return key, None


class AlertState(Protocol):
    def record(self, fingerprint: str, source: str, at: float, cooldown: float) -> Decision: ...

    def resolve(self, key: str) -> list[ClosedIncident]: ...


@dataclass
class _Incident:
    first_seen: float
    last_seen: float
    occurrences: int = 0
    suppressed: int = 0
    last_sent: float | None = None


class LocalAlertState:
    """In-process bookkeeping; ``clock`` (monotonic seconds) drives the cooldown."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, _Incident]] = {}

    def record(self, fingerprint: str, source: str, at: float, cooldown: float) -> Decision:
        now = self._clock()
        with self._lock:
            incidents = self._open.setdefault(source, {})
            incident = incidents.get(fingerprint)
            if incident is None:
                self._evict_if_full()
                incident = incidents[fingerprint] = _Incident(first_seen=at, last_seen=now)
            incident.occurrences += 1
            incident.last_seen = now
            if incident.last_sent is None or now - incident.last_sent >= cooldown:
                suppressed, incident.suppressed, incident.last_sent = incident.suppressed, 0, now
                return Decision(True, suppressed, incident.occurrences)
            incident.suppressed += 1
            return Decision(False, 0, incident.occurrences)

    def is_open(self, fingerprint: str) -> bool:
        source, _ = split_key(fingerprint)
        with self._lock:
            return fingerprint in self._open.get(source, {})

    def resolve(self, key: str) -> list[ClosedIncident]:
        source, fingerprint = split_key(key)
        with self._lock:
            incidents = self._open.get(source, {})
            names = [fingerprint] if fingerprint is not None else list(incidents)
            closed = []
            for name in names:
                incident = incidents.pop(name, None)
                if incident is not None:
                    closed.append(
                        ClosedIncident(
                            name, incident.first_seen, incident.occurrences, incident.suppressed
                        )
                    )
            if not incidents:
                self._open.pop(source, None)
            return closed

    def _evict_if_full(self) -> None:
        entries = [
            (inc.last_seen, src, fp) for src, d in self._open.items() for fp, inc in d.items()
        ]
        if len(entries) < MAX_LOCAL_INCIDENTS:
            return
        for _, src, fp in sorted(entries)[: len(entries) // 2]:
            self._open[src].pop(fp, None)
            if not self._open[src]:
                del self._open[src]


_RECORD = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSETNX', KEYS[2], 'first_seen', ARGV[2])
local occurrences = redis.call('HINCRBY', KEYS[2], 'occurrences', 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
local fresh = true
if tonumber(ARGV[3]) > 0 then
  fresh = redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3])
end
if fresh then
  local suppressed = tonumber(redis.call('HGET', KEYS[2], 'suppressed') or '0')
  redis.call('HSET', KEYS[2], 'suppressed', 0)
  return {1, suppressed, occurrences}
end
redis.call('HINCRBY', KEYS[2], 'suppressed', 1)
return {0, 0, occurrences}
"""

_RESOLVE = """
local members
if ARGV[1] == '' then
  members = redis.call('SMEMBERS', KEYS[1])
elseif redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  members = {ARGV[1]}
else
  members = {}
end
local out = {}
for _, fp in ipairs(members) do
  local digest = redis.sha1hex(fp)
  local incident = ARGV[2] .. 'incident:' .. digest
  local first = redis.call('HGET', incident, 'first_seen') or '0'
  local occurrences = redis.call('HGET', incident, 'occurrences') or '0'
  local suppressed = redis.call('HGET', incident, 'suppressed') or '0'
  redis.call('DEL', incident, ARGV[2] .. 'cooldown:' .. digest)
  redis.call('SREM', KEYS[1], fp)
  table.insert(out, {fp, first, occurrences, suppressed})
end
return out
"""


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - a key name, not security


class RedisAlertState:
    """The bookkeeping in Redis, shared by every process; local while Redis is down."""

    def __init__(self, url: str, prefix: str = KEY_PREFIX) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1.0)
        self.local = LocalAlertState()
        self._record = self.client.register_script(_RECORD)
        self._resolve = self.client.register_script(_RESOLVE)
        self._down = False

    def record(self, fingerprint: str, source: str, at: float, cooldown: float) -> Decision:
        if self.local.is_open(fingerprint):
            # Opened here while Redis was down: keep its cooldown here until it is resolved,
            # or Redis coming back would look like a new incident and alert again.
            return self.local.record(fingerprint, source, at, cooldown)
        digest = _digest(fingerprint)
        keys = [
            f"{self.prefix}open:{_digest(source)}",
            f"{self.prefix}incident:{digest}",
            f"{self.prefix}cooldown:{digest}",
        ]
        args = [fingerprint, repr(at), int(cooldown * 1000), INCIDENT_TTL_SECONDS]
        try:
            send, suppressed, occurrences = self._record(keys=keys, args=args)
        except redis.RedisError as exc:
            self._note_down(exc)
            return self.local.record(fingerprint, source, at, cooldown)
        self._note_up()
        return Decision(bool(send), int(suppressed), int(occurrences))

    def resolve(self, key: str) -> list[ClosedIncident]:
        source, fingerprint = split_key(key)
        closed = self.local.resolve(key)  # what was recorded here while Redis was down
        try:
            rows: Any = self._resolve(
                keys=[f"{self.prefix}open:{_digest(source)}"], args=[fingerprint or "", self.prefix]
            )
        except redis.RedisError as exc:
            self._note_down(exc)
            return closed
        self._note_up()
        for fp, first, occurrences, suppressed in rows:
            closed.append(
                ClosedIncident(_text(fp), float(first), int(occurrences), int(suppressed))
            )
        return closed

    def _note_down(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            log.warning("alert bookkeeping falls back to this process, redis failed: %s", exc)

    def _note_up(self) -> None:
        if self._down:
            self._down = False
            log.warning("alert bookkeeping is shared through redis again")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
