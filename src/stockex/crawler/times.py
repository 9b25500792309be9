"""Minutes and local time for the crawler: epoch seconds (UTC) in, ISO-8601 out."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

from stockex.errors import InvalidInput
from stockex.numbers import parse_int

MINUTE = 60


def local_iso(ts: int | None, tz: ZoneInfo) -> str | None:
    """``1719858240`` -> ``'2024-07-02T01:24:00+07:00'`` in ``tz``; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz).isoformat()


def parse_time(text: str, tz: ZoneInfo) -> int:
    """Epoch seconds from epoch digits or ISO-8601 (no offset: read in ``tz``).

    Raises :class:`~stockex.errors.InvalidInput` naming the value.
    """
    value = text.strip()
    number = parse_int(value)
    if number is not None and not value.startswith(("+", "-")):
        return number
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"not a time: {text!r} (use epoch seconds or ISO-8601)", code="invalid_time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return int(moment.timestamp())


def last_closed_minute(now: float) -> int:
    """The start of the newest minute that has ended at ``now``."""
    return math.floor(now / MINUTE) * MINUTE - MINUTE


def ceil_minute(ts: int) -> int:
    """The first minute start at or after ``ts``."""
    return -(-ts // MINUTE) * MINUTE
