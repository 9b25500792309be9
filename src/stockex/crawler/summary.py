"""What a crawl run reports: per chunk (progress), per run (summary), and its failure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from stockex.crawler.times import local_iso
from stockex.errors import DomainError

RUNNING, SUCCESS, STOPPED, FAILED = "running", "success", "stopped", "failed"


@dataclass(frozen=True)
class ChunkProgress:
    """Reported after each stored chunk (for progress bars)."""

    market: str
    window_from: int
    window_to: int
    chunk_from: int
    chunk_to: int
    fetched: int
    inserted: int
    updated: int


@dataclass(frozen=True)
class CrawlSummary:
    """What one run did. ``covered_to`` is the last minute of the last stored chunk."""

    market: str
    run_id: int
    status: str
    started_at: int
    finished_at: int
    window_from: int
    window_to: int
    covered_to: int | None
    inserted: int
    updated: int
    requests: int
    gaps: tuple[tuple[int, int], ...]
    gap_minutes: int
    error: str | None
    timezone: str

    @property
    def rows_written(self) -> int:
        return self.inserted + self.updated

    @property
    def ok(self) -> bool:
        return self.status in (SUCCESS, STOPPED)

    def as_dict(self, *, include_gaps: bool = True) -> dict[str, Any]:
        """JSON-ready, with ``*_local`` strings; ``include_gaps=False`` for a small XCom."""
        tz = ZoneInfo(self.timezone)
        data: dict[str, Any] = {
            "market": self.market,
            "run_id": self.run_id,
            "status": self.status,
            "rows_written": self.rows_written,
            "inserted": self.inserted,
            "updated": self.updated,
            "requests": self.requests,
            "gap_minutes": self.gap_minutes,
            "gap_count": len(self.gaps),
            "error": self.error,
            "timezone": self.timezone,
        }
        for name in ("started_at", "finished_at", "window_from", "window_to", "covered_to"):
            value = getattr(self, name)
            data[name] = value
            data[f"{name}_local"] = local_iso(value, tz)
        if include_gaps:
            data["gaps"] = [list(g) for g in self.gaps]
        return data

    def brief(self) -> dict[str, Any]:
        """The few fields worth passing on (an Airflow XCom): outcome and window."""
        full = self.as_dict(include_gaps=False)
        keys = ("market", "run_id", "status", "rows_written", "gap_minutes", "error",
                "window_from", "window_to", "window_from_local", "window_to_local",
                "covered_to_local")
        return {key: full[key] for key in keys}


class CrawlFailed(DomainError):
    """A run failed; ``summary`` says how far it got and ``__cause__`` is the original error."""

    status = 502
    code = "crawl_failed"

    def __init__(self, summary: CrawlSummary) -> None:
        super().__init__(
            f"crawl of {summary.market} failed (run {summary.run_id}): {summary.error}",
            details={"market": summary.market, "run_id": summary.run_id},
        )
        self.summary = summary
