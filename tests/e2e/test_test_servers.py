"""The servers ``make test`` starts for itself are gone when the run ends, however it ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stockex.testing import signal_when

TESTS = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_run_ended_by_a_signal_stops_its_redis_and_deletes_its_directory(  # type: ignore[no-untyped-def]
    tmp_path, sig
) -> None:
    """A CI timeout or a cancelled job sends SIGTERM (a closed terminal SIGHUP): the session's
    servers, in sessions of their own, ran on after pytest, with their temporary directories."""
    report = tmp_path / "server.txt"
    (tmp_path / "test_holds_redis.py").write_text(textwrap.dedent("""
        import os, pathlib, time

        def test_holds_redis(redis_server):
            report = pathlib.Path(os.environ["REPORT"])
            report.with_suffix(".tmp").write_text(
                f"{redis_server.process.pid} {redis_server.directory}")
            report.with_suffix(".tmp").replace(report)
            time.sleep(120)
    """))
    env = {k: v for k, v in os.environ.items() if k != "STOCKEX_TEST_REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["REPORT"] = str(report)
    process = subprocess.Popen(  # noqa: S603 - this interpreter's pytest, with tests/conftest.py
        [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(tmp_path),
         "-p", "conftest", "-p", "no:cacheprovider", "-q", "test_holds_redis.py"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stdout, stderr = signal_when(process, report.exists, sig)
    pid, directory = report.read_text().split(" ", 1)
    try:
        assert not alive(int(pid)), (stdout, stderr)
        assert not Path(directory).exists()
        assert process.returncode != 0  # the run still fails
    finally:
        if alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
