"""The crawler's pure parts: time helpers, chunking, gap bookkeeping, summaries, signals and
the Airflow failure report. No I/O."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockex.config import ConfigError
from stockex.crawler import (
    CrawlFailed,
    CrawlSummary,
    configured_markets,
    delete_old_logs,
    last_closed_minute,
    local_iso,
    parse_time,
    report_task_failure,
    seconds_until_next_run,
    stop_on_signals,
)
from stockex.crawler import loop as crawl_loop
from stockex.crawler import run as crawl_run
from stockex.errors import InvalidInput
from stockex.tiki import Kline
from stockex.tiki.client import UpstreamDataError, _parse_row, _valid_rows

HCM = ZoneInfo("Asia/Ho_Chi_Minh")


def k(ts: int) -> Kline:
    one = Decimal(1)
    return Kline(ts, one, one, one, one, one)


def summary(**changes: Any) -> CrawlSummary:
    values: dict[str, Any] = dict(
        market="asaxu", run_id=7, status="success", started_at=1719853230,
        finished_at=1719853231, window_from=1719852600, window_to=1719853740,
        covered_to=1719853740, inserted=19, updated=1, requests=2,
        gaps=((1719852900, 1719852960),), gap_minutes=2, error=None,
        timezone="Asia/Ho_Chi_Minh",
    )
    values.update(changes)
    return CrawlSummary(**values)


def test_local_iso_crosses_midnight_at_17_utc() -> None:
    assert local_iso(1719853140, HCM) == "2024-07-01T23:59:00+07:00"
    assert local_iso(1719853200, HCM) == "2024-07-02T00:00:00+07:00"
    assert local_iso(None, HCM) is None


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("1719853200", 1719853200),
        ("2024-07-02T00:00:00+07:00", 1719853200),
        ("2024-07-01T17:00:00Z", 1719853200),
        ("2024-07-02T00:00:00", 1719853200),  # no offset: the configured timezone
        (" 2024-07-02 00:00 ", 1719853200),
    ],
)
def test_parse_time(text: str, epoch: int) -> None:
    assert parse_time(text, HCM) == epoch


def test_parse_time_refuses_nonsense_with_a_code() -> None:
    with pytest.raises(InvalidInput) as bad:
        parse_time("last tuesday", HCM)
    assert bad.value.code == "invalid_time"
    arabic_indic = "".join(chr(0x660 + int(d)) for d in "1719853200")
    for odd in ("1_719_853_200", arabic_indic):
        with pytest.raises(InvalidInput):
            parse_time(odd, HCM)  # int() alone reads both as 1719853200


def test_last_closed_minute() -> None:
    assert last_closed_minute(1719853200) == 1719853140  # 00:00:00 exactly: 23:59 closed
    assert last_closed_minute(1719853259.9) == 1719853140
    assert last_closed_minute(1719853260) == 1719853200


def test_seconds_until_next_run_is_aligned_to_the_interval() -> None:
    assert seconds_until_next_run(1719853200.0, 60) == pytest.approx(crawl_loop.SETTLE_SECONDS)
    assert seconds_until_next_run(1719853230.0, 60) == pytest.approx(31.0)
    assert seconds_until_next_run(1719853259.5, 60) == pytest.approx(1.5)
    assert seconds_until_next_run(1719853201.0, 60) == pytest.approx(60.0)


def test_chunks_cover_the_window_exactly() -> None:
    assert list(crawl_run._chunks(0, 59 * 60, 25)) == [(0, 1440), (1500, 2940), (3000, 3540)]
    assert list(crawl_run._chunks(600, 600, 1000)) == [(600, 600)]
    assert list(crawl_run._chunks(660, 600, 1000)) == []  # nothing closed after the mark


def test_gaps_are_found_between_consecutive_minutes_and_across_calls() -> None:
    run = crawl_run._Run(market="asaxu", tz=HCM, previous_ts=0)
    run.see([k(60), k(240), k(300)])
    run.see([k(600)])
    assert run.gaps == [(120, 180), (360, 540)]
    assert run.gap_minutes == 2 + 4


def test_reported_gaps_are_capped_but_all_minutes_counted(caplog: Any) -> None:
    run = crawl_run._Run(market="asaxu", tz=HCM)
    with caplog.at_level(logging.WARNING, logger="stockex.crawler"):
        run.see([k(120 * i) for i in range(crawl_run.MAX_REPORTED_GAPS + 11)])
    assert len(run.gaps) == crawl_run.MAX_REPORTED_GAPS
    assert run.gap_minutes == crawl_run.MAX_REPORTED_GAPS + 10
    assert len(caplog.records) == crawl_run.MAX_REPORTED_GAPS


def test_summary_views_carry_local_times() -> None:
    view = summary().as_dict()
    assert view["window_from_local"] == "2024-07-01T23:50:00+07:00"
    assert view["window_to_local"] == "2024-07-02T00:09:00+07:00"
    assert view["rows_written"] == 20 and view["gaps"] == [[1719852900, 1719852960]]
    brief = summary().brief()
    assert "gaps" not in brief and brief["covered_to_local"] == "2024-07-02T00:09:00+07:00"
    assert summary(status="stopped").ok and not summary(status="failed").ok


def test_report_task_failure_names_the_market_and_error(caplog: Any) -> None:
    failed = CrawlFailed(summary(status="failed", error="asaxu ts=60: high 1 < max 2"))
    ti = SimpleNamespace(dag_id="tiki_candles", task_id="crawl_market", map_index=0,
                         try_number=3)
    with caplog.at_level(logging.ERROR, logger="stockex.crawler"):
        message = report_task_failure({"ti": ti, "exception": failed})
    assert message.startswith("tiki_candles.crawl_market[0] failed on try 3 for market asaxu")
    assert "high 1 < max 2" in message
    assert any(message in r.getMessage() for r in caplog.records)


def test_the_dag_refuses_an_empty_market_list(make_settings: Any) -> None:
    """Airflow maps no crawl over [] and calls the run a success: the DAG would stay green
    while nothing is crawled. The configured_markets task fails (and alerts) instead."""
    assert configured_markets(make_settings("sqlite://")) == ["asaxu"]
    empty = make_settings("sqlite://", crawler={"markets": []})
    with pytest.raises(ConfigError, match=r"crawler\.markets: empty: nothing to crawl"):
        configured_markets(empty)


def test_report_task_failure_survives_a_sparse_context() -> None:
    task = SimpleNamespace(op_kwargs={"market": "btcvnd"})
    message = report_task_failure({"task": task, "exception": TimeoutError("took too long")})
    assert "for market btcvnd" in message and "took too long" in message
    assert "failed" in report_task_failure({})


def test_first_signal_sets_the_stop_flag_and_a_second_interrupts() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    restore = stop_on_signals(stop, (signal.SIGTERM,))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------- fast row check

_numbers = st.one_of(
    st.integers(min_value=-5, max_value=40),
    st.decimals(min_value=-5, max_value=40, places=3),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-0"), True, None, "1", 1.5]),
)
_rows = st.one_of(
    st.tuples(st.sampled_from([0, 60, 90, 600, 6000, -60, True, "60"]), _numbers, _numbers,
              _numbers, _numbers, _numbers).map(list),
    st.lists(st.integers(min_value=0, max_value=120), max_size=7),
    st.sampled_from([None, {}, "row", 60]),
)


@given(st.lists(_rows, max_size=4))
def test_the_fast_row_check_agrees_with_the_full_validation(rows: list[Any]) -> None:
    """The fast path accepts exactly the answers of valid rows in strictly ascending ts (and
    gives the same klines); anything else it leaves to the full check, which names the
    problem or sorts repeated and unordered minutes out."""
    fast = _valid_rows(rows, 0, 3000)
    try:
        full = [_parse_row("asaxu", row, 0, 3000) for row in rows]
    except UpstreamDataError:
        assert fast is None
    else:
        if all(a.ts < b.ts for a, b in zip(full, full[1:], strict=False)):
            assert fast == full
        else:
            assert fast is None


def test_crawling_relaxes_the_garbage_collector_and_restores_it() -> None:
    import gc

    before = gc.get_threshold()
    relaxed = crawl_run.fewer_gc_passes
    with relaxed:
        assert gc.get_threshold()[0] == max(before[0], relaxed.young_threshold)
        with relaxed:  # a second crawl in another thread, say
            pass
        assert gc.get_threshold()[0] == max(before[0], relaxed.young_threshold)
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), relaxed:
        raise RuntimeError("a failed chunk")
    assert gc.get_threshold() == before


def test_old_task_logs_go_with_the_directories_they_empty_and_nothing_else(
    tmp_path: Path,
) -> None:
    """As the Airflow image's clean-logs: old ``*.log`` files, then the directories left
    empty. A directory a starting task just made (no log file yet) stays, so does
    ``lost+found``, a symbolic link (the dag processor's ``latest``) and a file that is no log."""
    root = Path(tmp_path)
    old = time.time() - 31 * 86400
    files = {name: root / name for name in (
        "dag_id=a/run_id=1/task_id=t/attempt=1.log", "dag_id=a/run_id=2/task_id=t/attempt=1.log",
        "dag_processor/2024-01-01/x.py.log", "lost+found/attempt=1.log", "notes/readme.txt")}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("log")
        os.utime(path, (old, old))
    os.utime(files["dag_id=a/run_id=2/task_id=t/attempt=1.log"], None)  # written just now
    (root / "dag_id=b" / "run_id=3" / "task_id=t").mkdir(parents=True)  # a task starting
    (root / "dag_processor" / "latest").symlink_to(root / "dag_processor" / "2024-01-01")

    assert delete_old_logs(root, 30) == 2
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "dag_id=a/run_id=2/task_id=t/attempt=1.log", "lost+found/attempt=1.log",
        "notes/readme.txt"]
    assert not (root / "dag_id=a" / "run_id=1").exists()
    assert not (root / "dag_processor" / "2024-01-01").exists()
    assert (root / "dag_id=b" / "run_id=3" / "task_id=t").is_dir()
    assert (root / "dag_processor" / "latest").is_symlink()
