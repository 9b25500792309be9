"""``stockex candles rebuild``: recomputes the rollups in the configured timezone."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from stockex.candles import store_minutes
from stockex.config import settings_from_mapping
from stockex.db import Database
from stockex.markets import sync_markets
from stockex.migrate import upgrade
from stockex.models import CandleRollup, CandleSeries
from stockex.tiki import Kline

DAY0_UTC = 1_719_792_000  # 2024-07-01T00:00:00Z


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "stockex.cli", *args], env=full_env, cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_rebuild_in_the_configured_timezone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'stockex.db'}"
    db = Database(url)
    upgrade(db)
    sync_markets(db, settings_from_mapping({"database": {"url": url}}))
    minutes = [Kline(DAY0_UTC + 60 * i, Decimal(10), Decimal(11), Decimal(9), Decimal(10),
                     Decimal(1)) for i in range(1440)]
    db.transaction(lambda s: store_minutes(s, "asaxu", minutes))  # in Asia/Ho_Chi_Minh

    def days() -> list[int]:
        with db.read() as s:
            return list(s.scalars(select(CandleRollup.time).where(CandleRollup.period == 1440)
                                  .order_by(CandleRollup.time)))

    assert len(days()) == 2  # one UTC day spans two +07:00 days
    env = {"STOCKEX__DATABASE__URL": url, "STOCKEX__TIMEZONE": "UTC"}
    result = run(["candles", "rebuild"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "asaxu: rollups rebuilt from 1440 minute(s) in UTC" in result.stdout
    assert days() == [DAY0_UTC]
    with db.read() as s:
        assert s.scalar(select(CandleSeries.timezone)) == "UTC"

    unknown = run(["candles", "rebuild", "--market", "nope"], env, tmp_path)
    assert unknown.returncode != 0
    assert unknown.stderr.strip() == "stockex: unknown_market: unknown market 'nope'"
    db.dispose()
