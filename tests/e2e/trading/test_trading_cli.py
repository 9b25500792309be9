"""``stockex user create``, ``deposit``, ``withdraw`` and ``reconcile`` as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

STOCKEX = [sys.executable, "-m", "stockex.cli"]

pytestmark = pytest.mark.slow  # real processes: a few seconds each


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    env["STOCKEX__SECRET_KEY"] = "cli-test-secret-key-long-enough-for-hs256-000"
    assert subprocess.run(STOCKEX + ["db", "upgrade"], env=env, cwd=tmp_path,
                          capture_output=True, check=False).returncode == 0

    def runner(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(STOCKEX + list(args), env=env, cwd=tmp_path, input=stdin,
                              capture_output=True, text=True, timeout=120, check=False)

    runner.database = tmp_path / "stockex.db"  # type: ignore[attr-defined]
    return runner


def test_user_deposit_withdraw_reconcile(run) -> None:  # type: ignore[no-untyped-def]
    created = run("user", "create", "alice", "--password-stdin", stdin="s3cret-pass\n")
    assert created.returncode == 0, created.stderr
    assert "created user alice" in created.stdout and "role user" in created.stdout
    assert "s3cret-pass" not in created.stdout + created.stderr
    admin = run("user", "create", "boss", "--password-stdin", "--admin", stdin="password-9")
    assert "role admin" in admin.stdout
    deposit = run("deposit", "alice", "XU", "100.25")
    assert deposit.returncode == 0 and "available 100.25" in deposit.stdout
    withdraw = run("withdraw", "alice", "XU", "0.25")
    assert withdraw.returncode == 0 and "available 100," in withdraw.stdout
    check = run("reconcile")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all invariants hold" in check.stdout


def test_cli_errors_are_one_line(run) -> None:  # type: ignore[no-untyped-def]
    run("user", "create", "alice", "--password-stdin", stdin="s3cret-pass")
    cases = [
        (("user", "create", "alice", "--password-stdin"), "s3cret-pass", "username_taken"),
        (("user", "create", "bob", "--password-stdin"), "short", "invalid_password"),
        (("withdraw", "alice", "XU", "1"), None, "insufficient_balance"),
        (("deposit", "nobody", "XU", "1"), None, "unknown_user"),
        (("deposit", "alice", "XU", "abc"), None, "invalid_amount"),
        (("deposit", "alice", "XU", "-5"), None, "invalid_amount"),  # an amount, not an option
        (("withdraw", "alice", "XU", "-5"), None, "invalid_amount"),
        (("deposit", "--admin", "alice", "XU", "5"), None, "No such option '--admin'"),
    ]
    for args, stdin, code in cases:
        result = run(*args, stdin=stdin)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and code in lines[0], result.stderr
    missing_flag = run("user", "create", "carl")
    assert missing_flag.returncode != 0 and "--password-stdin" in missing_flag.stderr


def test_reconcile_fails_and_says_what(run) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    run("user", "create", "alice", "--password-stdin", stdin="s3cret-pass")
    run("deposit", "alice", "XU", "10")
    conn = sqlite3.connect(run.database)
    conn.execute("UPDATE accounts SET available = '000000000000000011.000000000000000000' "
                 "WHERE asset = 'XU'")
    conn.commit()
    conn.close()
    result = run("reconcile")
    assert result.returncode == 1
    assert "FAIL ledger_matches_balances" in result.stdout
    assert "FAIL assets_conserved" in result.stdout
    assert "ok   fills_match_trades" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "stockex: reconcile failed: ledger_matches_balances, assets_conserved"
    ]
