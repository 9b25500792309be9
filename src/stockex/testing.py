"""Throwaway MySQL-compatible and Redis servers, nginx with the deployment's proxy
configuration, and a fake Slack, for tests and benchmarks.

Each server runs from the binaries on PATH (``mariadbd``/``mysqld``, ``redis-server``) in a
temporary directory on a free loopback port, and is stopped and deleted at the end.
``STOCKEX_TEST_MYSQL_URL`` / ``STOCKEX_TEST_REDIS_URL`` select external servers instead (for
CI with service containers); the MySQL URL must name a user that may create databases.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MYSQL_URL_ENV = "STOCKEX_TEST_MYSQL_URL"
REDIS_URL_ENV = "STOCKEX_TEST_REDIS_URL"
# Test databases compare text as a production server does by default (MySQL 8's
# utf8mb4_0900_ai_ci, MariaDB's utf8mb4_general_ci): without letter case and, on MariaDB, without
# trailing blanks. A binary collation here would hide every comparison that a deployment makes
# case-insensitively (user names; client order ids have a binary collation of their own).
TEST_COLLATION = "utf8mb4_general_ci"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class ServerUnavailable(RuntimeError):
    """The server binary is missing or did not come up; the message says what to do."""


def end_on_termination_signals() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, as Ctrl-C, so that ``finally`` blocks
    and fixtures stop the servers started here. They run in sessions of their own (a signal
    to the test run or benchmark does not reach them), so a CI timeout, a cancelled job or a
    closed terminal would otherwise leave MariaDB and Redis running, with their temporary
    directories. Handlers someone else installed are left alone."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, interrupt)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None
        )
        if found:
            return found
    return None


def _wait_for(check, timeout: float, what: str, log: Path | None = None,  # type: ignore[no-untyped-def]
              *, failing: str = "did not start") -> None:
    """Call ``check`` until it stops raising; after ``timeout`` raise ServerUnavailable
    ("``what`` ``failing`` within ...", with the last error and the tail of ``log``)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            check()
            return
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
            time.sleep(0.1)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise ServerUnavailable(f"{what} {failing} within {timeout:.0f}s: {last}{tail}")


def _answers(url: str) -> None:
    """Raise unless ``url`` answers 200."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        response.read()


def _wait_or_kill(check, process: subprocess.Popen[bytes], timeout: float,  # type: ignore[no-untyped-def]
                  what: str) -> None:
    """:func:`_wait_for` ``check``; on timeout kill ``process`` and raise."""
    try:
        _wait_for(check, timeout, what)
    except ServerUnavailable:
        process.kill()
        raise


def signal_when(process: subprocess.Popen[str], ready: Any, sig: int,
                timeout: float = 60) -> tuple[str, str]:
    """Send ``sig`` to ``process`` once ``ready()`` is true (the process must still run until
    then), and return its (stdout, stderr); a process still alive at the end is killed."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready():
            if process.poll() is not None:
                raise AssertionError(f"exited {process.returncode} before the signal")
            time.sleep(0.02)
        process.send_signal(sig)
        return process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def lose_mysql_connection(dbapi_connection: Any) -> None:
    """As when the network drops: the PyMySQL connection's socket closes and error 2013 is
    raised, as PyMySQL does for a connection lost during a query."""
    import pymysql

    dbapi_connection._force_close()
    raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Poll ``url`` until it answers 200; on timeout kill ``process`` and raise
    :class:`ServerUnavailable` (benchmarks start gunicorn and the simulator this way)."""
    _wait_or_kill(lambda: _answers(url), process, timeout, what)


def api_server_command(server: str, port: int, workers: int, threads: int,
                       worker_class: str = "") -> list[str]:
    """The command serving ``stockex.api``'s app on 127.0.0.1:``port`` as in production (see
    the Dockerfile): gunicorn (sync workers, or ``worker_class``; gthread with several
    threads) or granian (``threads`` blocking threads per worker, failed workers respawned,
    logging left to stockex). Run it with ``STOCKEX_CONFIG`` (or the settings) in its
    environment, and wait for it with :func:`wait_for_api_server`."""
    if server == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--threads", str(threads),
            "--worker-class", worker_class or ("gthread" if threads > 1 else "sync"),
            "--log-level", "warning", "--timeout", "60", "stockex.api:create_app()",
        ]
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "wsgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--blocking-threads", str(threads), "--respawn-failed-workers", "--no-log",
            "stockex.api:create_app",
        ]
    raise ValueError(f"unknown server {server!r} (gunicorn or granian)")


def listening_sockets(port: int) -> int:
    """How many TCP sockets of this network namespace listen on ``port`` (IPv4 and IPv6),
    from ``/proc/net/tcp*``: one per granian worker (each opens its own, with SO_REUSEPORT),
    one for a whole gunicorn."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl local_address rem_address st ...
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def wait_for_api_server(server: str, port: int, process: subprocess.Popen[bytes],
                        workers: int, timeout: float = 60) -> None:
    """Wait until the server of :func:`api_server_command` answers ``/health`` and, for
    granian, until every worker listens. granian's workers each listen on a socket of their
    own and the kernel spreads new connections over the sockets listening at that moment;
    ``/health`` answers as soon as the first worker is up, and clients that connected then
    would all stay on it (kept-alive connections stay where they landed)."""
    url = f"http://127.0.0.1:{port}/health"

    def ready() -> None:
        _answers(url)
        if server == "granian" and (listening := listening_sockets(port)) < workers:
            raise ServerUnavailable(f"{listening} of {workers} workers listen")

    _wait_or_kill(ready, process, timeout, server)


def nginx_binary() -> str | None:
    """Debian's nginx (``/usr/sbin``, off a non-root PATH), or None."""
    return _which("nginx")


def render_nginx_template(template: Path, values: Mapping[str, str]) -> str:
    """``template`` as the official nginx image's entrypoint renders ``/etc/nginx/templates``
    (``20-envsubst-on-templates.sh``): each ``$NAME`` or ``${NAME}`` set in its environment,
    here ``values``, is replaced; anything else (nginx's own ``$host``) is left as it is."""
    return re.sub(r"\$(\{)?(\w+)(?(1)\})", lambda m: values.get(m[2], m[0]),
                  template.read_text())


def nginx_command(directory: Path, site: str) -> list[str]:
    """The command running nginx in the foreground with ``site`` (a rendered
    ``deploy/nginx`` template) inside ``http { }``, as the official image's nginx.conf
    includes it, and its pid file, logs (``error.log``, ``access.log``) and temporary files in
    ``directory``. Add ``-t`` to only check the configuration."""
    nginx = nginx_binary()
    if nginx is None:
        raise ServerUnavailable("nginx is not installed (apt-get install nginx; `make test` "
                                "installs it)")
    (directory / "site.conf").write_text(site)
    temp = "".join(f"    {kind}_temp_path {directory}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Started as root, nginx runs its workers as `nobody`, who may not enter pytest's tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log info;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n    access_log {directory}/access.log;\n{temp}"
        f"    include {directory}/site.conf;\n}}\n"
    )
    return [nginx, "-p", str(directory), "-e", str(directory / "error.log"),
            "-c", str(directory / "nginx.conf")]


def machine_cpu_ticks() -> list[int]:
    """The machine's CPU time so far, in clock ticks, as ``/proc/stat`` counts it: user,
    nice, system, idle, iowait, irq, softirq, steal (all CPUs together)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Where the machine's CPU time went between two :func:`machine_cpu_ticks`, in percent:
    ``busy`` (everything but idle and iowait), ``idle`` (idle + iowait) and ``steal`` (taken
    by the hypervisor for other guests). A benchmark whose ``busy`` is near 100 was limited
    by the CPUs, not by waiting (locks, fsync, round trips)."""
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = max(1, sum(delta))
    idle = delta[3] + delta[4]
    return {
        "busy": round(100 * (total - idle - delta[7]) / total, 1),
        "idle": round(100 * idle / total, 1),
        "steal": round(100 * delta[7] / total, 1),
    }


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its reaped and living children, from
    ``/proc`` (benchmarks report where the CPU went: API, MariaDB, simulator); 0.0 when the
    process is gone."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += process_cpu_seconds(int(child))
    except (OSError, ValueError):
        pass
    return total


@dataclass
class MySQLServer:
    """A server plus the URL prefix ``mysql+pymysql://user:pass@host:port`` to reach it."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None

    def database_url(self, name: str) -> str:
        return f"{self.url}/{name}?charset=utf8mb4"

    def admin_connection(self):  # type: ignore[no-untyped-def]
        import pymysql
        from sqlalchemy.engine import make_url

        u = make_url(self.url)
        return pymysql.connect(
            host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
            autocommit=True, charset="utf8mb4",
        )

    def create_database(self, name: str) -> str:
        conn = self.admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {TEST_COLLATION}"
                )
        finally:
            conn.close()
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        conn = self.admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop the server (data stays); ``start`` brings it back on the same port."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def start(self) -> None:
        if self.directory is None:
            raise ServerUnavailable("an external server cannot be restarted from here")
        if self.process is not None and self.process.poll() is None:
            return
        self.process = _spawn_mariadbd(self.directory, int(self.url.rsplit(":", 1)[1]))
        _wait_for(self._ping, 60, "mariadbd", self.directory / "error.log")

    def _ping(self) -> None:
        self.admin_connection().close()

    def hung(self) -> contextlib.AbstractContextManager[None]:
        """Freeze the server (see :func:`_frozen`)."""
        return _frozen(self.process, "mariadbd")

    def close(self) -> None:
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def _frozen(process: subprocess.Popen[bytes] | None, name: str) -> Iterator[None]:
    """Freeze a server (SIGSTOP): it still accepts TCP but never answers; SIGCONT after.

    ``kill`` returns before the server has stopped: one thread takes the signal and only
    then stops the others, so a query sent at once can still be answered. This waits until
    every thread is stopped.
    """
    if process is None or process.poll() is not None:
        raise ServerUnavailable("an external or stopped server cannot be frozen from here")
    pid = process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        _wait_for(lambda: _all_threads_stopped(pid), 10, name,
                  failing="did not stop after SIGSTOP")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _all_threads_stopped(pid: int) -> None:
    """Raise while any thread of ``pid`` is not yet stopped (state T in /proc)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except FileNotFoundError:  # a thread that just ended
            continue
        # the state follows the parenthesised command name, which may hold spaces
        if text.rpartition(")")[2].split()[0] not in ("T", "t"):
            raise RuntimeError(f"thread {stat.parent.name} still runs")


def _mysql_options(directory: Path, port: int) -> list[str]:
    options = [
        "--no-defaults",
        f"--datadir={directory / 'data'}",
        f"--socket={directory / 'mysqld.sock'}",
        f"--pid-file={directory / 'mysqld.pid'}",
        f"--log-error={directory / 'error.log'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        "--skip-log-bin",
        "--innodb-buffer-pool-size=512M",
        "--innodb-log-file-size=256M",
        "--innodb-flush-log-at-trx-commit=1",
        "--innodb-lock-wait-timeout=10",
        "--max-connections=500",
        "--character-set-server=utf8mb4",
        f"--collation-server={TEST_COLLATION}",
    ]
    if os.geteuid() == 0:
        options.append("--user=root")
    return options


def _spawn_mariadbd(directory: Path, port: int) -> subprocess.Popen[bytes]:
    server = _which("mariadbd", "mysqld")
    if server is None:  # pragma: no cover - checked before
        raise ServerUnavailable("mariadbd not found")
    return subprocess.Popen(  # noqa: S603 - fixed binary and arguments
        [server, *_mysql_options(directory, port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_mysql(*, private: bool = False) -> MySQLServer:
    """Start a private MariaDB/MySQL (or use ``$STOCKEX_TEST_MYSQL_URL``).

    ``private``: always a server of its own, whatever the environment says, for the tests
    that stop, restart or freeze it (an external server cannot be, and others share it).
    """
    external = None if private else os.environ.get(MYSQL_URL_ENV)
    if external:
        return MySQLServer(url=external.rstrip("/"))
    server = _which("mariadbd", "mysqld")
    installer = _which("mariadb-install-db", "mysql_install_db")
    if server is None or installer is None:
        raise ServerUnavailable(
            "no MySQL-compatible server found: install mariadb-server (make test does it as "
            f"root) or set {MYSQL_URL_ENV}=mysql+pymysql://user:pass@host:port"
        )
    directory = Path(tempfile.mkdtemp(prefix="stockex-mysql-"))
    args = [
        installer,
        "--no-defaults",
        f"--datadir={directory / 'data'}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]
    if os.geteuid() == 0:
        args.append("--user=root")
    result = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise ServerUnavailable(f"mariadb-install-db failed: {result.stderr.strip()[-2000:]}")
    port = free_port()
    process = _spawn_mariadbd(directory, port)
    sock = directory / "mysqld.sock"

    def root_ping() -> None:
        import pymysql

        # Connecting before the server is ready can leak pymysql's socket; wait for its log.
        log = directory / "error.log"
        if not log.exists() or "ready for connections" not in log.read_text(errors="replace"):
            raise ServerUnavailable("not ready yet")
        pymysql.connect(unix_socket=str(sock), user="root").close()

    try:
        _wait_for(root_ping, 60, "mariadbd", directory / "error.log")
        import pymysql

        conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE USER 'stockex'@'%' IDENTIFIED BY 'stockex'")
            cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'stockex'@'%'")
        conn.close()
    except BaseException:
        process.kill()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return MySQLServer(
        url=f"mysql+pymysql://stockex:stockex@127.0.0.1:{port}",
        process=process,
        directory=directory,
    )


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None
    port: int = 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def start(self) -> None:
        if self.directory is None:
            raise ServerUnavailable("an external server cannot be restarted from here")
        if self.process is not None and self.process.poll() is None:
            return
        self.process = _spawn_redis(self.directory, self.port)
        _wait_for(self._ping, 20, "redis-server", self.directory / "redis.log")

    def hung(self) -> contextlib.AbstractContextManager[None]:
        """Freeze the server (see :func:`_frozen`)."""
        return _frozen(self.process, "redis-server")

    def _ping(self) -> None:
        import redis

        redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()

    def close(self) -> None:
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _spawn_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = _which("redis-server")
    if binary is None:  # pragma: no cover - checked before
        raise ServerUnavailable("redis-server not found")
    return subprocess.Popen(  # noqa: S603 - fixed binary and arguments
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_redis(*, private: bool = False) -> RedisServer:
    """Start a private Redis (or use ``$STOCKEX_TEST_REDIS_URL``); ``private`` as for
    :func:`start_mysql`."""
    external = None if private else os.environ.get(REDIS_URL_ENV)
    if external:
        return RedisServer(url=external)
    if _which("redis-server") is None:
        raise ServerUnavailable(
            "redis-server not found: install redis-server (make test does it as root) or set "
            f"{REDIS_URL_ENV}=redis://host:port/0"
        )
    directory = Path(tempfile.mkdtemp(prefix="stockex-redis-"))
    port = free_port()
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", directory=directory, port=port)
    server.process = _spawn_redis(directory, port)
    try:
        _wait_for(server._ping, 20, "redis-server", directory / "redis.log")
    except BaseException:
        server.close()
        raise
    return server


@contextlib.contextmanager
def mysql_server() -> Iterator[MySQLServer]:
    server = start_mysql()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.close()


# ----------------------------------------------------------------------------- fake Slack


@dataclass
class SlackMessage:
    """One message the fake Slack accepted: through ``chat.postMessage`` or a webhook."""

    kind: str  # "api" or "webhook"
    text: str
    channel: str | None
    payload: dict[str, Any]
    headers: dict[str, str]
    raw: str

    @property
    def wire(self) -> str:
        """Everything that came over the wire for this message (headers and body)."""
        return "\n".join(f"{k}: {v}" for k, v in self.headers.items()) + "\n\n" + self.raw


class FakeSlack:
    """A local stand-in for Slack, speaking the real wire formats, for tests and demos.

    * Web API: ``POST {api_base_url}chat.postMessage`` with ``Authorization: Bearer <token>``
      (or a ``token`` form field) and a JSON or form body; answers
      ``{"ok": true, "channel": ..., "ts": ...}``, or ``{"ok": false, "error": ...}`` for a bad
      token or a missing channel/text, as Slack does (HTTP 200).
    * Incoming webhook: ``POST {webhook_url}`` with a JSON body; answers ``ok`` (text), or 400
      ``invalid_payload`` / ``no_text``.

    Faults: :meth:`rate_limit` answers the next requests with 429 and ``Retry-After``;
    :meth:`hang` delays every answer; :meth:`down` closes the port (connection refused) and
    :meth:`up` opens it again on the same port. ``requests`` counts every request received.
    """

    def __init__(self, token: str = "xoxb-fake-slack-token") -> None:  # noqa: S107 - test token
        self.token = token
        self.port = 0
        self.requests = 0
        self._messages: list[SlackMessage] = []
        self._lock = threading.Condition()
        self._rate_limited = 0
        self._retry_after = 1
        self._hang_seconds = 0.0
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeSlack:
        if self._server is not None:
            return self
        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _slack_handler(self))
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let hanging requests finish
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    down = stop

    def up(self) -> None:
        self.start()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/services/T0FAKE/B0FAKE/fakewebhooksecret0123"

    # -- faults

    def rate_limit(self, times: int = 1, retry_after: int = 1) -> None:
        with self._lock:
            self._rate_limited, self._retry_after = times, retry_after

    def hang(self, seconds: float) -> None:
        """Answer every request only after ``seconds`` (0 turns it off)."""
        self._hang_seconds = seconds

    # -- what arrived

    @property
    def messages(self) -> list[SlackMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[SlackMessage]:
        """Wait until at least ``count`` messages arrived; return them (maybe fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    # -- used by the handler

    def _take_rate_limit(self) -> int | None:
        with self._lock:
            self.requests += 1
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return self._retry_after
            return None

    def _record(self, message: SlackMessage) -> None:
        with self._lock:
            self._messages.append(message)
            self._lock.notify_all()


def _slack_handler(slack: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", errors="replace")
            retry_after = slack._take_rate_limit()
            if slack._hang_seconds:
                slack._release.wait(slack._hang_seconds)
            is_api = self.path.split("?", 1)[0].endswith("/chat.postMessage")
            if retry_after is not None:
                body = '{"ok": false, "error": "ratelimited"}' if is_api else "rate_limited"
                self._answer(429, body, {"Retry-After": str(retry_after)})
            elif is_api:
                self._api(raw)
            elif self.path.startswith("/services/"):
                self._webhook(raw)
            else:
                self._answer(404, "not found")

        def _payload(self, raw: str) -> dict[str, Any] | None:
            kind = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
            if kind == "application/json":
                try:
                    data = json.loads(raw)
                except ValueError:
                    return None
                return data if isinstance(data, dict) else None
            return {k: v[-1] for k, v in urllib.parse.parse_qs(raw).items()}

        def _api(self, raw: str) -> None:
            payload = self._payload(raw)
            if payload is None:
                self._answer_json({"ok": False, "error": "invalid_json"})
                return
            auth = self.headers.get("Authorization") or ""
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else payload.get("token")
            if token != slack.token:
                self._answer_json({"ok": False, "error": "invalid_auth"})
                return
            channel, text = payload.get("channel"), payload.get("text")
            if not channel:
                self._answer_json({"ok": False, "error": "channel_not_found"})
                return
            if not text and not payload.get("blocks"):
                self._answer_json({"ok": False, "error": "no_text"})
                return
            slack._record(SlackMessage("api", str(text or ""), str(channel), payload,
                                       dict(self.headers.items()), raw))
            ts = f"{time.time():.6f}"
            self._answer_json({"ok": True, "channel": "C0FAKE", "ts": ts,
                               "message": {"type": "message", "text": text, "ts": ts}})

        def _webhook(self, raw: str) -> None:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                self._answer(400, "invalid_payload")
                return
            if not payload.get("text") and not payload.get("blocks"):
                self._answer(400, "no_text")
                return
            slack._record(SlackMessage("webhook", str(payload.get("text") or ""),
                                       payload.get("channel"), payload,
                                       dict(self.headers.items()), raw))
            self._answer(200, "ok")

        def _answer_json(self, body: dict[str, Any]) -> None:
            self._answer(200, json.dumps(body), content_type="application/json; charset=utf-8")

        def _answer(self, status: int, body: str, headers: dict[str, str] | None = None,
                    content_type: str = "text/html") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
