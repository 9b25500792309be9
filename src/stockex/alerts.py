"""Slack incident alerts: sent in the background, at most once per cooldown, never a secret.

Entry points call these; each returns at once, never raises, and never waits on Slack
(``settings`` defaults to :func:`stockex.config.load_settings`, read once per process):

``alert_exception(source, exc, context=None, *, settings=None, service="stockex")``
    Something failed. ``source`` says where ("api GET /api/v1/orders", "database",
    "crawler asaxu"); the *fingerprint* is ``f"{source}#{error type}"``.
``alert(source, error_type, message, context=None, *, settings=None, service="stockex")``
    The same for a failure that is no exception of this process (another program's exit
    status): no traceback.
``resolve(source_or_fingerprint, *, settings=None, service="stockex")``
    It works again: open incidents of that source (or that one fingerprint) get one
    "resolved" message each batch; nothing is sent when nothing was open.
``crawler_failed(market, exc, *, window=None, run_id=None, settings=None, hint=None)``
    A crawl run of ``market`` failed (source ``"crawler <market>"``); ``window`` is the
    ``(time_from, time_to)`` epoch seconds it was fetching, ``hint`` what to do.
``crawler_recovered(market, *, run_id=None, settings=None)``
    A crawl run of ``market`` succeeded; sends "resolved" if it had been failing.
``airflow_task_failed(context)`` / ``airflow_task_succeeded(context)``
    Airflow ``on_failure_callback`` / ``on_success_callback`` (source
    ``"airflow <dag>.<task>"``); they wait up to 10 s for delivery, as the task process exits.
``flush(timeout=5.0)``
    Wait until every queued alert has been handled (tests, shutdown; also run at exit).

How it works: :func:`notifier_for` gives the process-wide :class:`AlertNotifier` for a
configuration. Its worker thread takes events from a bounded queue (full -> the event is
dropped and counted), asks the :mod:`stockex.alert_state` bookkeeping whether a message is due
— the first occurrence of a fingerprint, then at most one per ``slack.cooldown_seconds``, which
reports how many repeats were held back — formats it, redacts it (:mod:`stockex.redaction`:
passwords, tokens, Authorization headers, secrets in URLs, JWTs, the configured secrets) and
sends it: ``WebClient.chat_postMessage`` when ``slack.token`` is set (``slack.base_url`` honoured),
else the ``slack.webhook_url`` incoming webhook, else the log only. Slack's 429s are retried per
Retry-After by slack-sdk's ``RateLimitErrorRetryHandler``; any other failure is logged and
counted, never raised.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any

from stockex.alert_senders import Sender, sender_for
from stockex.alert_state import AlertState, ClosedIncident, LocalAlertState, RedisAlertState
from stockex.logs import format_exception
from stockex.redaction import redact, redact_mapping, secrets_from_settings

if TYPE_CHECKING:
    from stockex.config import Settings

log = logging.getLogger("stockex.alerts")

SERVICE = "stockex"
SERVICE_API = "stockex-api"
SERVICE_CRAWLER = "stockex-crawler"
SERVICE_AIRFLOW = "stockex-airflow"

QUEUE_SIZE = 1000
MAX_MESSAGE_CHARS = 1000
MAX_CONTEXT_VALUE_CHARS = 300
MAX_TRACEBACK_CHARS = 3000
AIRFLOW_FLUSH_SECONDS = 10.0


# ----------------------------------------------------------------------------- the notifier


@dataclass(frozen=True)
class _Alert:
    source: str
    error_type: str
    message: str
    service: str
    context: Mapping[str, Any]
    exc: BaseException | None
    at: float

    @property
    def fingerprint(self) -> str:
        return f"{self.source}#{self.error_type}"


@dataclass(frozen=True)
class _Resolve:
    key: str
    service: str
    context: Mapping[str, Any]
    at: float


_STOP = object()


@dataclass
class Counters:
    sent: int = 0
    suppressed: int = 0
    dropped: int = 0
    failed: int = 0
    resolved: int = 0


def error_type_name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class AlertNotifier:
    """Queues alerts and resolutions; one daemon worker thread handles them (see module doc)."""

    def __init__(
        self,
        sender: Sender,
        state: AlertState | None = None,
        *,
        cooldown_seconds: float = 300,
        secrets: tuple[str, ...] = (),
        host: str | None = None,
        queue_size: int = QUEUE_SIZE,
        tz: tzinfo = UTC,
    ) -> None:
        self.sender = sender
        self.tz = tz  # the configured timezone: times in messages read as the crawl logs do
        self.state: AlertState = state or LocalAlertState()
        self.cooldown_seconds = cooldown_seconds
        self.secrets = secrets
        self.host = host or socket.gethostname()
        self.counters = Counters()
        self._queue_size = queue_size
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- producers (any thread; never block, never raise)

    def alert(
        self,
        source: str,
        error_type: str,
        message: str = "",
        *,
        service: str = SERVICE,
        context: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
    ) -> None:
        self._put(_Alert(source, error_type, message, service, dict(context or {}), exc,
                         time.time()))

    def alert_exception(
        self,
        source: str,
        exc: BaseException,
        context: Mapping[str, Any] | None = None,
        *,
        service: str = SERVICE,
    ) -> None:
        try:
            message = str(exc)
        except Exception:  # noqa: BLE001
            message = "<unprintable>"
        self.alert(source, error_type_name(exc), message, service=service, context=context,
                   exc=exc)

    def resolve(
        self, key: str, *, service: str = SERVICE, context: Mapping[str, Any] | None = None
    ) -> None:
        self._put(_Resolve(key, service, dict(context or {}), time.time()))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been handled; False on timeout."""
        q = self._queue
        deadline = time.monotonic() + timeout
        with q.all_tasks_done:
            while q.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                q.all_tasks_done.wait(remaining)
        return True

    def discard_pending(self) -> int:
        """Drop what is queued and not yet being handled (tests; a shutdown that cannot wait)."""
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return dropped
            self._queue.task_done()
            dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                return
            thread.join(timeout)

    def _put(self, event: Any) -> None:
        try:
            self._ensure_worker()
            self._queue.put_nowait(event)
        except queue.Full:
            self.counters.dropped += 1
            if self.counters.dropped in (1, 10) or self.counters.dropped % 100 == 0:
                log.warning("alert queue full: %d alert(s) dropped", self.counters.dropped)
        except Exception:  # noqa: BLE001 - alerting must never break the caller
            log.exception("could not queue an alert")

    def _ensure_worker(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():  # forked (gunicorn --preload): threads did not survive
                self._queue = queue.Queue(self._queue_size)
                self._pid = os.getpid()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="stockex-alerts", daemon=True
                )
                self._thread.start()

    # -- the worker

    def _run(self) -> None:
        q = self._queue
        while True:
            event = q.get()
            try:
                if event is _STOP:
                    return
                if isinstance(event, _Alert):
                    self._handle_alert(event)
                else:
                    self._handle_resolve(event)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                log.warning("alert handling failed: %s", redact(exc, self.secrets))
            finally:
                q.task_done()

    def _handle_alert(self, event: _Alert) -> None:
        decision = self.state.record(
            event.fingerprint, event.source, event.at, self.cooldown_seconds
        )
        if not decision.send:
            self.counters.suppressed += 1
            return
        self._deliver(self.format_alert(event, decision.suppressed), event.fingerprint)

    def _handle_resolve(self, event: _Resolve) -> None:
        closed = self.state.resolve(event.key)
        if closed:
            self.counters.resolved += len(closed)
            self._deliver(self.format_resolved(event, closed), f"resolved {event.key}")

    def _deliver(self, text: str, what: str) -> None:
        text = redact(text, self.secrets)
        if not self.sender.log_only:
            log.warning("alert: %s", redact(what, self.secrets))
        try:
            self.sender.send(text)
        except Exception as exc:  # noqa: BLE001 - Slack down or rejecting: log, go on
            self.counters.failed += 1
            log.warning(
                "could not deliver alert %s: %s: %s",
                redact(what, self.secrets), type(exc).__name__, redact(exc, self.secrets),
            )
            return
        self.counters.sent += 1

    # -- formatting (runs on the worker)

    def format_alert(self, event: _Alert, suppressed: int) -> str:
        lines = [
            f":rotating_light: *{event.service}* on `{self.host}`: "
            f"*{event.error_type}* in {event.source}"
        ]
        # redacted before they are clipped: a cut through a credential would leave its
        # pattern (a URL password, "[parameters: ...]") unrecognisable and the rest visible
        if event.message:
            message = redact(event.message, self.secrets)
            lines.append("> " + _clip(message, MAX_MESSAGE_CHARS).replace("\n", "\n> "))
        lines += _context_lines(event.context, self.secrets)
        if suppressed:
            lines.append(
                f"_{suppressed} more occurrence(s) were held back since the previous message "
                f"(cooldown {self.cooldown_seconds:g} s)_"
            )
        if event.exc is not None:
            text = redact(format_exception(event.exc), self.secrets)
            if len(text) > MAX_TRACEBACK_CHARS:
                text = "... (truncated)\n" + text[-MAX_TRACEBACK_CHARS:]
            lines.append("```" + text.replace("```", "'''").rstrip() + "```")
        return "\n".join(lines)

    def format_resolved(self, event: _Resolve, closed: list[ClosedIncident]) -> str:
        lines = [f":white_check_mark: *{event.service}* on `{self.host}`: resolved {event.key}"]
        for incident in closed:
            since = datetime.fromtimestamp(int(incident.first_seen), self.tz).isoformat()
            minutes = max(0.0, event.at - incident.first_seen) / 60
            lines.append(
                f"• {incident.fingerprint}: failing since {since} "
                f"({minutes:.1f} min), {incident.occurrences} occurrence(s)"
            )
        lines += _context_lines(event.context, self.secrets)
        return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _context_lines(context: Mapping[str, Any], secrets: tuple[str, ...]) -> list[str]:
    clean = redact_mapping(
        {k: v for k, v in context.items() if v is not None and v != ""}, secrets
    )
    return [f"• {k}: {_clip(v, MAX_CONTEXT_VALUE_CHARS)}" for k, v in clean.items()]


# ----------------------------------------------------------------------------- process-wide

_notifiers: dict[tuple[Any, ...], AlertNotifier] = {}
_notifiers_lock = threading.Lock()
_default_settings: Settings | None = None


def build_notifier(settings: Settings) -> AlertNotifier:
    state: AlertState = (
        RedisAlertState(settings.redis.url) if settings.redis.url else LocalAlertState()
    )
    return AlertNotifier(
        sender_for(settings),
        state,
        cooldown_seconds=settings.slack.cooldown_seconds,
        secrets=secrets_from_settings(settings),
        tz=settings.tz,
    )


def notifier_for(settings: Settings) -> AlertNotifier:
    """The process's notifier for this Slack/Redis configuration (built on first use)."""
    key = (settings.slack, settings.redis.url, secrets_from_settings(settings), settings.timezone)
    with _notifiers_lock:
        notifier = _notifiers.get(key)
        if notifier is None:
            notifier = _notifiers[key] = build_notifier(settings)
        return notifier


#: What alerting reads of the configuration: when the whole of it is invalid, these sections
#: alone still say which Slack to tell (and where the shared cooldown lives).
ALERT_SECTIONS = ("slack", "redis", "timezone")


def _settings(settings: Settings | None) -> Settings:
    """``settings``, or the process's configuration (read once). When that is invalid —
    often the very failure being reported, e.g. by the DAG's ``configured_markets`` task —
    its :data:`ALERT_SECTIONS` are read alone; when the file cannot be read at all (a
    ``STOCKEX_CONFIG`` naming a missing file) those of the environment alone; and only if
    they are bad too the defaults (no Slack, only the log)."""
    global _default_settings
    if settings is not None:
        return settings
    if _default_settings is None:
        from stockex.config import CONFIG_PATH_ENV, Settings, load_settings

        try:
            _default_settings = load_settings()
        except Exception as exc:  # noqa: BLE001 - a bad config must not hide the alert
            without_file = {k: v for k, v in os.environ.items() if k != CONFIG_PATH_ENV}
            fallbacks = (("its", {}), ("the environment's", {"environ": without_file}))
            problems = [exc]
            for whose, source in fallbacks:
                try:
                    _default_settings = load_settings(sections=ALERT_SECTIONS, **source)
                except Exception as also:  # noqa: BLE001
                    problems.append(also)
                    continue
                log.warning("alerts: the configuration is invalid (%s); alerting with %s "
                            "%s settings alone", exc, whose, ", ".join(ALERT_SECTIONS))
                break
            else:
                log.warning("alerts: using defaults, the configuration is invalid: %s",
                            "; ".join(map(str, problems)))
                _default_settings = Settings()
    return _default_settings


def _notifier(settings: Settings | None) -> AlertNotifier:
    return notifier_for(_settings(settings))


def alert_exception(
    source: str,
    exc: BaseException,
    context: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    service: str = SERVICE,
) -> None:
    """Report a failure at ``source`` (see module doc). Never raises."""
    try:
        _notifier(settings).alert_exception(source, exc, context, service=service)
    except Exception:  # noqa: BLE001
        log.exception("could not queue an alert")


def alert(
    source: str,
    error_type: str,
    message: str,
    context: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    service: str = SERVICE,
) -> None:
    """Report a failure at ``source`` that has no exception object here. Never raises."""
    try:
        _notifier(settings).alert(source, error_type, message, service=service, context=context)
    except Exception:  # noqa: BLE001
        log.exception("could not queue an alert")


def resolve(
    source_or_fingerprint: str,
    *,
    settings: Settings | None = None,
    service: str = SERVICE,
    context: Mapping[str, Any] | None = None,
) -> None:
    """``source`` (or one fingerprint) works again; "resolved" if it was failing. Never raises."""
    try:
        _notifier(settings).resolve(source_or_fingerprint, service=service, context=context)
    except Exception:  # noqa: BLE001
        log.exception("could not queue a resolution")


def crawler_source(market: str) -> str:
    return f"crawler {market}"


def crawler_failed(
    market: str,
    exc: BaseException,
    *,
    window: tuple[int, int] | None = None,
    run_id: int | str | None = None,
    settings: Settings | None = None,
    hint: str | None = None,
) -> None:
    """A crawl run of ``market`` failed while fetching ``window`` (epoch seconds); ``hint``
    says what to do, when that is known."""
    context: dict[str, Any] = {"market": market, "run_id": run_id}
    if window is not None:
        context["window"] = _window_line(window, settings)
    if hint:
        context["action"] = hint
    alert_exception(
        crawler_source(market), exc, context, settings=settings, service=SERVICE_CRAWLER
    )


def crawler_recovered(
    market: str, *, run_id: int | str | None = None, settings: Settings | None = None
) -> None:
    """A crawl run of ``market`` succeeded: resolves its open crawler incidents."""
    resolve(
        crawler_source(market),
        settings=settings,
        service=SERVICE_CRAWLER,
        context={"market": market, "run_id": run_id},
    )


def _window_text(window: tuple[int, int], settings: Settings) -> str:
    tz = settings.tz
    start, end = (datetime.fromtimestamp(int(t), tz).isoformat() for t in window)
    return f"{start} .. {end} ({int(window[0])}..{int(window[1])})"


def _window_line(window: tuple[int, int], settings: Settings | None) -> str:
    try:
        return _window_text(window, _settings(settings))
    except Exception:  # noqa: BLE001 - a malformed window must not lose the alert
        return repr(window)


def airflow_fields(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``("airflow <dag>.<task>[<map index>]", {dag, task, try_number, run_id, ...})`` from an
    Airflow callback context; missing parts read ``?`` or None."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None) or "?"
    task_id = getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", None) or "?"
    map_index = getattr(ti, "map_index", None)
    where = f"airflow {dag_id}.{task_id}"
    if isinstance(map_index, int) and map_index >= 0:
        where += f"[{map_index}]"
    fields = {
        "dag": dag_id,
        "task": task_id,
        "try_number": getattr(ti, "try_number", None),
        "run_id": getattr(ti, "run_id", None) or context.get("run_id"),
        "logical_date": context.get("logical_date"),
    }
    try:
        fields["log_url"] = getattr(ti, "log_url", None)
    except Exception as exc:  # noqa: BLE001 - log_url reads Airflow config; optional
        log.debug("no Airflow log_url: %s", exc)
    return where, fields


def airflow_task_failed(
    context: Mapping[str, Any],
    settings: Settings | None = None,
    *,
    market: str | None = None,
    crawl_run_id: int | None = None,
    window: tuple[int, int] | None = None,
) -> None:
    """Airflow ``on_failure_callback``: alert with dag/task/try (and, for a failed crawl run,
    its market, id and window as :func:`crawler_failed` shows them), then wait for delivery."""
    try:
        source, fields = airflow_fields(context)
        fields.update(market=market, crawl_run_id=crawl_run_id)  # None: no line
        if window is not None:
            fields["window"] = _window_line(window, settings)
        error = context.get("exception")
        if not isinstance(error, BaseException):
            error = AirflowTaskFailed(str(error) if error else "the task failed")
        _tell_and_wait(settings, source, fields, error)
    except Exception:  # noqa: BLE001 - a callback must not fail the task runner
        log.exception("could not send the Airflow failure alert")


def airflow_task_succeeded(context: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Airflow ``on_success_callback``: resolves that task's open incident, if any."""
    try:
        _tell_and_wait(settings, *airflow_fields(context))
    except Exception:  # noqa: BLE001
        log.exception("could not send the Airflow recovery message")


def _tell_and_wait(settings: Settings | None, source: str, fields: dict[str, Any],
                   error: BaseException | None = None) -> None:
    """Alert ``error`` at ``source`` (or, without one, resolve its incident) and wait for the
    delivery: an Airflow callback's process ends right after it."""
    notifier = _notifier(settings)
    if error is None:
        notifier.resolve(source, service=SERVICE_AIRFLOW, context=fields)
    else:
        notifier.alert_exception(source, error, fields, service=SERVICE_AIRFLOW)
    notifier.flush(AIRFLOW_FLUSH_SECONDS)


class AirflowRunTimedOut(RuntimeError):
    """A DAG run ended by its ``dagrun_timeout``."""


def _dag_run_source(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    dag = context.get("dag")
    dag_id = getattr(dag, "dag_id", None) or "?"
    return f"airflow {dag_id}", {"dag": dag_id, "run_id": context.get("run_id")}


def airflow_dag_run_failed(context: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Airflow's DAG-level ``on_failure_callback``: alerts a run ended by its
    ``dagrun_timeout``. Airflow marks that run's unfinished tasks *skipped*, so no task
    callback runs and the grid shows no failure; a run failed by a task was that task's
    alert already, and is only logged here."""
    try:
        source, fields = _dag_run_source(context)
        reason = context.get("reason")
        if reason != "timed_out":
            log.info("%s: run %s failed (%s)", source, fields["run_id"], reason)
            return
        timeout = getattr(context.get("dag"), "dagrun_timeout", None)
        ti = context.get("ti") or context.get("task_instance")
        fields["unfinished_task"] = getattr(ti, "task_id", None)
        error = AirflowRunTimedOut(
            f"the run was stopped by its dagrun_timeout ({timeout}); Airflow marked its "
            "unfinished tasks skipped"
        )
        _tell_and_wait(settings, source, fields, error)
    except Exception:  # noqa: BLE001 - a callback must not fail the DAG processor
        log.exception("could not send the Airflow DAG run alert")


def airflow_dag_run_succeeded(context: Mapping[str, Any], settings: Settings | None = None) -> None:
    """Airflow's DAG-level ``on_success_callback``: resolves a timed-out run's incident."""
    try:
        _tell_and_wait(settings, *_dag_run_source(context))
    except Exception:  # noqa: BLE001
        log.exception("could not send the Airflow DAG run recovery message")


class AirflowTaskFailed(RuntimeError):
    """Stands in for the task's error when Airflow hands the callback none."""


def flush(timeout: float = 5.0) -> bool:
    """Wait for every notifier of the process to handle what is queued (tests, exit)."""
    with _notifiers_lock:
        notifiers = list(_notifiers.values())
    deadline = time.monotonic() + timeout
    return all(n.flush(max(0.0, deadline - time.monotonic())) for n in notifiers)


@atexit.register
def _flush_at_exit() -> None:
    # Daemon threads still run while atexit handlers do: give queued alerts a moment.
    flush(5.0)
