"""The ``stockex`` command as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stockex.testing import free_port, signal_when

STOCKEX = [sys.executable, "-m", "stockex.cli"]


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
        stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    full_env.update(env or {})
    return subprocess.run(
        STOCKEX + args, env=full_env, cwd=cwd, input=stdin, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def test_help_lists_commands() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    for command in ("db", "serve"):
        assert command in result.stdout
    assert run(["db", "--help"]).returncode == 0
    assert "upgrade" in run(["db", "--help"]).stdout


@pytest.mark.parametrize("group", [[], ["db"], ["candles"], ["crawl-runs"], ["user"]])
def test_command_lists_are_not_cut_short(group: list[str]) -> None:
    """click cuts a command's first docstring line to fit the list ("reconcile  Check every
    ledger and balance invariant; exit 0 only when..."): each command has a short help."""
    result = run([*group, "--help"], env={"COLUMNS": "80"})
    assert result.returncode == 0
    commands = result.stdout.split("Commands:\n", 1)[1].splitlines()
    assert commands and all(not line.endswith("...") for line in commands), result.stdout


def test_bad_database_url_is_one_line_naming_the_key(tmp_path: Path) -> None:
    result = run(["db", "upgrade"], env={"STOCKEX__DATABASE__URL": "nonsense"}, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database.url" in lines[0]


def test_unknown_key_in_config_file_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "conf.yaml"
    config.write_text("database:\n  url: sqlite:///x.db\ncrawler:\n  chunk_minuts: 5\n")
    result = run(["db", "upgrade"], env={"STOCKEX_CONFIG": str(config)}, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == ["stockex: config: crawler.chunk_minuts: unknown key"]
    assert not (tmp_path / "x.db").exists()  # nothing was started


def test_db_upgrade_sqlite_twice(tmp_path: Path) -> None:
    first = run(["db", "upgrade"], cwd=tmp_path)  # the embedded default: ./stockex.db
    assert first.returncode == 0, first.stderr
    assert "migrated empty -> " in first.stdout
    assert (tmp_path / "stockex.db").exists()
    second = run(["db", "upgrade"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout and "0 market(s) synced" in second.stdout


def test_a_command_before_db_upgrade_says_to_run_it(tmp_path: Path) -> None:
    line = one_error_line(run(["reconcile"], cwd=tmp_path))
    assert line.startswith("stockex: database error: no such table: ")
    assert line.endswith("(the database schema is not migrated: run `stockex db upgrade`, "
                         "or check database.url)")


@pytest.mark.parametrize(("args", "line"), [
    (["--gap", "abc"], "stockex: sim: --gap must be FROM:TO in epoch seconds, got 'abc'"),
    (["--gap", "5:1"], "stockex: sim: --gap '5:1' ends before it starts"),
    (["--origin", "garbage"],
     "stockex: sim: --origin: not a time: 'garbage' (use epoch seconds or ISO-8601)"),
    (["--error-rate", "2"], "stockex: sim: --error-rate must be within [0, 1]"),
])
def test_sim_argument_errors_name_the_flag(args: list[str], line: str, tmp_path: Path) -> None:
    assert one_error_line(run(["sim", "--port", "0", *args], cwd=tmp_path)) == line


def test_db_upgrade_mysql_twice(fresh_mysql_url: str, tmp_path: Path) -> None:
    env = {"STOCKEX__DATABASE__URL": fresh_mysql_url}
    first = run(["db", "upgrade"], env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "migrated empty -> " in first.stdout
    second = run(["db", "upgrade"], env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout


def test_db_upgrade_unreachable_database_fails_cleanly(tmp_path: Path) -> None:
    env = {"STOCKEX__DATABASE__URL": "mysql+pymysql://u:p@127.0.0.1:1/none"}
    result = run(["db", "upgrade"], env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("stockex: database error:")
    assert "Traceback" not in result.stderr


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get_content_type(), exc.read()


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``stockex db upgrade`` then ``stockex serve`` on the embedded default, as make run does."""
    assert run(["db", "upgrade"], cwd=tmp_path).returncode == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    log = (tmp_path / "serve.err").open("wb")  # the test may read it (same tmp_path)
    process = subprocess.Popen(  # noqa: S603
        STOCKEX + ["serve", "--port", str(port)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if get(base + "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        log.close()
        raise AssertionError((tmp_path / "serve.err").read_text())
    yield base
    process.terminate()
    process.wait(10)
    log.close()


def test_serve_logs_one_access_line_per_request(served: str, tmp_path: Path) -> None:
    for _ in range(3):
        assert get(served + "/api/v1/markets")[0] == 200
    time.sleep(0.2)
    lines = [line for line in (tmp_path / "serve.err").read_text().splitlines()
             if "/api/v1/markets" in line]
    assert len(lines) == 3 and all("stockex.access" in line for line in lines), lines


def test_serve_embedded_default(served: str) -> None:
    from openapi_spec_validator import validate

    status, ctype, body = get(served + "/health")
    assert (status, ctype) == (200, "application/json")
    status, ctype, body = get(served + "/api/docs")
    assert status == 200 and ctype == "text/html" and b"swagger-ui" in body
    status, ctype, body = get(served + "/api/openapi.json")
    assert status == 200
    validate(json.loads(body))
    status, ctype, body = get(served + "/api/v1/markets")
    assert status == 200
    assert [m["id"] for m in json.loads(body)] == ["asaxu"]
    status, ctype, body = get(served + "/ready")
    assert status == 200


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``stockex: ...`` line a failing command printed on stderr."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stockex: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["serve", "--port", "99999"],
    ["serve", "--port", "0"],  # serve has no "any free port"
    ["sim", "--port", "65536"],
    ["sim", "--port", "-1"],
])
def test_ports_out_of_range_are_refused(args: list[str], tmp_path: Path) -> None:
    # Before: the OS wrapped 99999 to 34463 and served there until killed.
    result = run(args, cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert "--port" in one_error_line(result)


def test_password_stdin_that_is_not_utf8(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    result = subprocess.run(
        STOCKEX + ["user", "create", "bob", "--password-stdin"], env=env, cwd=tmp_path,
        input=b"caf\xe9-password\n", capture_output=True, timeout=120, check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["stockex: --password-stdin: the password is not UTF-8"]
    assert not (tmp_path / "stockex.db").exists()  # nothing was touched


def test_password_stdin_when_stdin_is_closed(tmp_path: Path) -> None:
    """`stockex user create bob --password-stdin <&-`: Python has no sys.stdin at all; it was
    an AttributeError traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    result = subprocess.run(  # noqa: S603
        ["/bin/sh", "-c", 'exec "$@" <&-', "sh", *STOCKEX, "user", "create", "bob",
         "--password-stdin"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1
    assert one_error_line(result) == "stockex: --password-stdin: standard input is closed"
    assert not (tmp_path / "stockex.db").exists()


@pytest.mark.parametrize("args", [
    [b"deposit", b"\xe9t\xe9", b"XU", b"1"],  # Latin-1 bytes: a traceback at the SQL bind
    [b"user", b"create", b"abc", b"--password-stdin", b"--email", b"\xff@example.com"],
    [b"serve", b"--host", b"\xff"],  # an idna UnicodeError traceback
])
def test_arguments_that_are_not_utf8_are_one_line(args: list[bytes], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    result = subprocess.run(  # noqa: S603
        [*STOCKEX, *args], env=env, cwd=tmp_path, input=b"password1\n", capture_output=True,
        timeout=120, check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    bad = next(arg for arg in args if not arg.isascii())
    assert stderr.strip().splitlines() == [f"stockex: an argument is not UTF-8 text: {bad!r}"]
    assert not (tmp_path / "stockex.db").exists()


def test_utf8_arguments_in_a_c_locale(tmp_path: Path) -> None:
    """Without locale coercion Python decodes arguments as ASCII with surrogate escapes: an
    e-mail address 'zoë@example.com' met the database as a UnicodeEncodeError traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKEX", "LC_", "LANG"))}
    env.update({"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"})
    assert run(["db", "upgrade"], cwd=tmp_path).returncode == 0
    result = subprocess.run(  # noqa: S603
        [*STOCKEX, "user", "create", "zoe", "--password-stdin", "--email",
         "zoë@example.com".encode()],
        env=env, cwd=tmp_path, input=b"password1\n", capture_output=True, timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("created user zoe ")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C in a command (here while it waits for the password) was click's blank line and
    "Aborted!" with exit 1; now one stockex line and 130, as a shell reports an interrupt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    process = subprocess.Popen(  # noqa: S603
        STOCKEX + ["user", "create", "bob", "--password-stdin"], env=env, cwd=tmp_path,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wchan = Path(f"/proc/{process.pid}/wchan")
    # once it blocks reading the password (Python's handler is set by then)
    _, stderr = signal_when(process, lambda: "pipe_read" in wchan.read_text(), signal.SIGINT)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == ["stockex: interrupted"]
    assert not (tmp_path / "stockex.db").exists()


@pytest.mark.parametrize("command", ["serve", "sim"])
def test_busy_port_is_one_line(command: str, tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = {"STOCKEX__SECRET_KEY": "cli-test-secret-key-long-enough-for-hs256-000"}
        result = run([command, "--port", str(port)], env=env, cwd=tmp_path)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith(f"stockex: {'sim: ' if command == 'sim' else ''}"
                           f"cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in line


@pytest.mark.parametrize(("args", "command"), [
    (["user", "create", "bob"], "stockex user create"),  # --password-stdin is required
    (["--bogus"], "stockex"),
    (["nosuch"], "stockex"),
    (["db", "upgrade", "extra"], "stockex db upgrade"),
    (["deposit", "alice"], "stockex deposit"),
    (["serve", "--port", "http"], "stockex serve"),
    (["crawl", "--once=yes"], None),  # click knows no command here: no hint
])
def test_usage_errors_are_one_line(args: list[str], command: str | None, tmp_path: Path) -> None:
    result = run(args, cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.endswith(f" (see '{command} --help')") if command else "--once" in line
    assert not (tmp_path / "stockex.db").exists()


def test_help_is_unchanged_by_one_line_usage_errors() -> None:
    result = run(["user", "create", "--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: stockex user create [OPTIONS] NAME")
    assert "--password-stdin" in result.stdout
    bare = run([])  # no command: the help, as click shows it
    assert bare.returncode == 2 and "Commands:" in bare.stdout + bare.stderr


@pytest.mark.parametrize("args", [["reconcile"], ["deposit", "bob", "XU", "5"], ["db", "upgrade"],
                                  ["crawl", "--once"]])
def test_an_unopenable_sqlite_file_is_one_line_saying_so(args: list[str], tmp_path: Path) -> None:
    """database.url's directory is a regular file (or missing, or not writable): one line
    naming the file and what to check, exit 1; no traceback (crawl: from its lock file)."""
    (tmp_path / "plain-file").write_text("x")
    path = tmp_path / "plain-file" / "stockex.db"
    result = run(args, env={"STOCKEX__DATABASE__URL": f"sqlite:///{path}"}, cwd=tmp_path)
    assert result.returncode == 1
    line = one_error_line(result)
    if args[0] == "crawl":
        assert line == (f"stockex: crawl_lock_unavailable: cannot create the crawl lock file "
                        f"{path}.crawl-asaxu.lock beside the SQLite database file: Not a "
                        "directory (the directory must exist and be writable by this process)")
    else:
        assert line == (f"stockex: database error: cannot open the SQLite database file {path}: "
                        "its directory must exist and be writable by this process, and the "
                        "path must not be a directory")
