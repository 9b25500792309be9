"""Candle periods and how local time cuts the time line into buckets (CONTRACT §5).

A bucket of ``period`` minutes starts at a local wall-clock time:

* periods up to 1440 are aligned to local midnight:
  ``floor((t + offset) / (period*60)) * period*60 - offset``;
* 4320 (three days) likewise, on local days counted from 1970-01-01;
* 10080 (a week) starts on Monday 00:00 local time.

:class:`BucketClock` computes this for a timezone. For a zone with one fixed offset (the
default ``Asia/Ho_Chi_Minh`` since 1975) it is the formula above, pure integer arithmetic.
For zones with daylight saving time the offset is the one in force at the instant; a bucket
whose local start lies on the other side of a transition starts at that local wall time as
``zoneinfo`` reads it (``fold=0``), or, when clocks skipped that wall time, at the end of the
skipped stretch. Whatever the zone, the functions satisfy what the rollups
rely on, and the tests check: ``align(t) <= t``, ``align(align(t, p), p) == align(t, p)``, and
a bucket of a longer period is the union of the buckets of :data:`SOURCE_PERIOD` it contains.
"""

from __future__ import annotations

import bisect
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from stockex.errors import InvalidInput
from stockex.numbers import parse_int

PERIODS: tuple[int, ...] = (1, 5, 15, 30, 60, 120, 240, 360, 720, 1440, 4320, 10080)
ROLLUP_PERIODS: tuple[int, ...] = PERIODS[1:]

#: Each rolled-up period is computed from the buckets of a shorter period nested in it;
#: the order of ROLLUP_PERIODS lists every source before the periods built from it.
SOURCE_PERIOD: dict[int, int] = {
    5: 1, 15: 5, 30: 15, 60: 30, 120: 60, 240: 120, 360: 120, 720: 360,
    1440: 720, 4320: 1440, 10080: 1440,
}

DAY = 86_400
WEEK_PERIOD = 10_080
#: 1970-01-01 was a Thursday; weeks are counted from Monday 1969-12-29, three days earlier.
_WEEK_SHIFT = 3 * DAY
# The offset table covers these years; outside it, zoneinfo answers directly (slower).
_TABLE_FROM = int(datetime(1900, 1, 1, tzinfo=UTC).timestamp())
_TABLE_TO = int(datetime(2200, 1, 1, tzinfo=UTC).timestamp())
_PROBE_STEP = 7 * DAY  # transitions of real zones are months apart; a week step finds them
#: Largest amount by which a bucket can be longer in UTC than its nominal length (a repeated
#: hour when clocks fall back; two for the old double summer time).
DST_SLACK = 2 * 3600
# Epoch seconds accepted from users: 0001-01-01 .. 9999-12-31, what datetime can represent.
_MIN_EPOCH = -62_135_596_800
_MAX_EPOCH = 253_402_300_799
# A "+" typed into a URL's query string unencoded decodes to a space (form encoding): the
# documented "2024-07-02T01:24:00+07:00" arrives as "2024-07-02T01:24:00 07:00". A space
# between a time of day and digits can mean nothing else.
_SPACED_OFFSET = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?) (\d{2}(?::?\d{2})?)$")


class BucketClock:
    """Bucket alignment and local-time rendering for one timezone (cheap to share)."""

    def __init__(self, tz: ZoneInfo | str) -> None:
        self.tz = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        self.name = str(self.tz.key)
        self._transitions, self._offsets = _offset_table(self.tz)
        #: From ``steady_from`` on the zone keeps one offset, ``steady_offset`` (for
        #: ``Asia/Ho_Chi_Minh`` since 1975); there alignment is the plain formula. Zones
        #: that still observe daylight saving time have no steady part (``steady_from`` None).
        self.steady_offset = self._offsets[-1]
        self.steady_from: int | None = None
        if not self._transitions:
            self.steady_from = _MIN_EPOCH
        elif self._transitions[-1] < _TABLE_TO - 100 * 365 * DAY:
            # a week's slack: a bucket starting before the last transition is not steady
            self.steady_from = self._transitions[-1] + 8 * DAY

    # ------------------------------------------------------------------ offsets

    def offset(self, t: int) -> int:
        """UTC offset in seconds in force at epoch second ``t``."""
        if self.steady_from is not None and t >= self.steady_from:
            return self.steady_offset
        if _TABLE_FROM <= t < _TABLE_TO:
            return self._offsets[bisect.bisect_right(self._transitions, t)]
        return _zone_offset(self.tz, t)

    # ---------------------------------------------------------------- alignment

    def align(self, t: int, period: int) -> int:
        """Start (epoch seconds) of the ``period``-minute bucket holding second ``t``."""
        size = period * 60
        shift = _WEEK_SHIFT if period == WEEK_PERIOD else 0
        if self.steady_from is not None and t >= self.steady_from:
            return t - (t + self.steady_offset + shift) % size
        off = self.offset(t)
        wall = t + off
        start_wall = wall - (wall + shift) % size
        start = start_wall - off
        if self.offset(start) == off:
            return start
        # A transition lies between the bucket's local start and t: read the start's wall
        # time in the zone as zoneinfo does (first occurrence of a repeated time).
        local = datetime(1970, 1, 1) + timedelta(seconds=start_wall)
        start = int(local.replace(tzinfo=self.tz, fold=0).timestamp())
        if start > t and _TABLE_FROM <= t < _TABLE_TO:
            # The start's wall time was skipped, and not at the gap's first minute (Chatham's
            # clocks go from 02:45 to 03:45: 03:00 and 03:30 never happen); zoneinfo reads it
            # after t. The bucket starts where the gap ends, at the transition.
            start = self._transitions[bisect.bisect_right(self._transitions, t) - 1]
        return start

    def align_many(self, times: list[int], period: int) -> list[int]:
        """``[align(t, period) for t in times]``, as plain arithmetic when every time lies
        in the zone's steady part (the crawler's hot path aligns every minute it stores)."""
        steady = self.steady_from
        if not times or steady is None or min(times) < steady:
            return [self.align(t, period) for t in times]
        size = period * 60
        shift = self.steady_offset + (_WEEK_SHIFT if period == WEEK_PERIOD else 0)
        return [t - (t + shift) % size for t in times]

    def scan_end(self, start: int, period: int) -> int:
        """An exclusive end such that every second of the bucket starting at ``start`` is
        before it: exact for fixed-offset zones, a little generous across a transition."""
        end = start + period * 60
        if self.steady_from is not None and start >= self.steady_from:
            return end
        return end + DST_SLACK

    # ---------------------------------------------------------------- rendering

    def local_iso(self, t: int) -> str:
        """``2024-07-02T01:24:00+07:00`` for epoch second ``t``."""
        if self.steady_from is not None and t >= self.steady_from:
            return _fixed_iso(t, self.steady_offset)
        return datetime.fromtimestamp(t, self.tz).isoformat()

    def parse_time(self, raw: str, name: str) -> int:
        """Epoch seconds from ``raw``: an integer of epoch seconds, or ISO-8601 (a naive
        one is local time in this zone; a space before the offset is read as the "+" of an
        unencoded URL). 400 ``invalid_<name>`` when it is neither."""
        text = raw.strip()
        try:
            value = parse_int(text)
            if value is None:
                iso = _SPACED_OFFSET.sub(r"\1+\2", text.replace("z", "Z"))
                moment = datetime.fromisoformat(iso)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=self.tz)
                value = int(moment.timestamp())
        except (ValueError, OverflowError):
            value = None
        if value is None or not _MIN_EPOCH <= value <= _MAX_EPOCH:
            raise InvalidInput(
                f"{name} must be epoch seconds or an ISO-8601 time, got {raw!r}",
                code=f"invalid_{name}",
                details={name: raw},
            )
        return value


@lru_cache(maxsize=32)
def clock_for(timezone: str) -> BucketClock:
    """The shared :class:`BucketClock` of a timezone name."""
    return BucketClock(timezone)


def validate_period(raw: str | None) -> int:
    """A candle period from a query string (default 1); 400 ``invalid_period`` otherwise."""
    if raw is None or raw == "":
        return 1
    period = parse_int(raw)
    if period not in PERIODS:
        raise InvalidInput(
            f"period must be one of {', '.join(map(str, PERIODS))} (minutes), got {raw!r}",
            code="invalid_period",
            details={"period": raw, "allowed": list(PERIODS)},
        )
    return period


# ---------------------------------------------------------------------- internals


def _zone_offset(tz: ZoneInfo, t: int) -> int:
    delta = datetime.fromtimestamp(t, UTC).astimezone(tz).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def _offset_table(tz: ZoneInfo) -> tuple[list[int], list[int]]:
    """Every instant in 1900..2200 at which the zone's UTC offset changes, and the offsets:
    ``offsets[i]`` holds before ``transitions[i]``, ``offsets[-1]`` after the last one."""
    transitions: list[int] = []
    offsets = [_zone_offset(tz, _TABLE_FROM)]
    probe = _TABLE_FROM
    while probe < _TABLE_TO:
        nxt = min(probe + _PROBE_STEP, _TABLE_TO)
        after = _zone_offset(tz, nxt)
        if after != offsets[-1]:
            lo, hi = probe, nxt  # offset(lo) is the old one, offset(hi) the new one
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _zone_offset(tz, mid) == offsets[-1]:
                    lo = mid
                else:
                    hi = mid
            transitions.append(hi)
            offsets.append(after)
        probe = nxt
    return transitions, offsets


_CLOCK_TIMES = [f"{m // 60:02d}:{m % 60:02d}" for m in range(1440)]
_SECONDS = [f"{s:02d}" for s in range(60)]


@lru_cache(maxsize=4096)
def _local_date(day: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(days=day)).date().isoformat()


@lru_cache(maxsize=64)
def _offset_suffix(offset: int) -> str:
    sign = "+" if offset >= 0 else "-"
    hours, rest = divmod(abs(offset), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


def _fixed_iso(t: int, offset: int) -> str:
    # Table lookups instead of datetime formatting: a 1,000-candle page renders 1,000 of these.
    day, second = divmod(t + offset, DAY)
    return (f"{_local_date(day)}T{_CLOCK_TIMES[second // 60]}:{_SECONDS[second % 60]}"
            f"{_offset_suffix(offset)}")
