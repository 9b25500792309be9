"""Slack alerts against the fake Slack: delivery, cooldown, "resolved", faults, redaction."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from stockex import alerts
from stockex.alert_senders import LogSender, SlackApiSender, SlackWebhookSender
from stockex.alert_state import RedisAlertState
from stockex.alerts import AlertNotifier
from stockex.config import ConfigError, load_settings, settings_from_mapping
from stockex.testing import FakeSlack, start_redis

SECRET_KEY = "jwt-signing-key-that-must-never-leave"
DB_PASSWORD = "db-pass-w0rd-xyz"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI3In0.TJVA95OrM7E2cBab30RMHrHDcEfxjoYZgeFONFh7HgQ"


def settings_for(slack: FakeSlack, *, webhook: bool = False, cooldown: int = 300, **extra):  # type: ignore[no-untyped-def]
    section = (
        {"webhook_url": slack.webhook_url}
        if webhook
        else {"token": slack.token, "base_url": slack.api_base_url}
    )
    return settings_from_mapping(
        {
            "secret_key": SECRET_KEY,
            "database": {"url": f"mysql+pymysql://stockex:{DB_PASSWORD}@db:3306/stockex"},
            "slack": {**section, "channel": "#ops", "cooldown_seconds": cooldown},
            **extra,
        }
    )


def failure(message: str = "boom") -> RuntimeError:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


def test_web_api_message_carries_service_host_error_context_and_traceback(fake_slack) -> None:  # type: ignore[no-untyped-def]
    notifier = AlertNotifier(
        SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url), host="api-1"
    )
    notifier.alert_exception(
        "api GET /api/v1/markets", failure("it broke"),
        {"method": "GET", "path": "/api/v1/markets", "request_id": "req-1", "user_id": 7},
        service="stockex-api",
    )
    assert notifier.flush(10)
    [message] = fake_slack.messages
    assert message.kind == "api" and message.channel == "#ops"
    assert message.headers["Authorization"] == f"Bearer {fake_slack.token}"
    text = message.text
    assert "*stockex-api* on `api-1`" in text
    assert "*RuntimeError* in api GET /api/v1/markets" in text
    assert "> it broke" in text
    for line in ("• method: GET", "• path: /api/v1/markets", "• request_id: req-1",
                 "• user_id: 7"):
        assert line in text
    assert "Traceback (most recent call last)" in text and 'raise RuntimeError(message)' in text
    assert notifier.counters.sent == 1


def test_webhook_delivery(fake_slack) -> None:  # type: ignore[no-untyped-def]
    notifier = AlertNotifier(SlackWebhookSender(fake_slack.webhook_url))
    notifier.alert("crawler asaxu", "UpstreamUnavailable", "tiki answered 503",
                   service="stockex-crawler", context={"market": "asaxu"})
    assert notifier.flush(10)
    [message] = fake_slack.messages
    assert message.kind == "webhook"
    assert json.loads(message.raw)["text"] == message.text
    assert "*UpstreamUnavailable* in crawler asaxu" in message.text


@pytest.mark.parametrize("webhook", [False, True])
def test_slack_control_characters_are_escaped(fake_slack, webhook: bool) -> None:  # type: ignore[no-untyped-def]
    """Slack reads <...> as a link or a mention: a route rule, a traceback's <module> or an
    error message must show as written, and never ping the channel or link elsewhere."""
    sender = (SlackWebhookSender(fake_slack.webhook_url) if webhook else
              SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url))
    notifier = AlertNotifier(sender)
    notifier.alert_exception(
        "api GET /api/v1/markets/<market>/candles",
        failure("<!channel> see <https://evil.example|the fix> & a > b\n> quoted"),
        {"path": "/api/v1/markets/<!here>/candles"},
    )
    assert notifier.flush(10)
    [message] = fake_slack.messages
    text = message.text
    assert "in api GET /api/v1/markets/&lt;market&gt;/candles" in text
    assert "\n> &lt;!channel&gt; see &lt;https://evil.example|the fix&gt; &amp; a &gt; b\n" in text
    assert "\n> &gt; quoted\n" in text  # the quote marker stays, the message's > does not
    assert "• path: /api/v1/markets/&lt;!here&gt;/candles" in text
    assert "<" not in text


def test_long_tracebacks_and_messages_are_truncated(fake_slack) -> None:  # type: ignore[no-untyped-def]
    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("x" * 5000)
        recurse(n - 1)

    try:
        recurse(60)
    except ValueError as exc:
        error = exc
    notifier = AlertNotifier(SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url))
    notifier.alert_exception("somewhere", error)
    assert notifier.flush(10)
    text = fake_slack.messages[0].text
    assert len(text) < 6000
    assert "... (truncated)" in text
    assert text.rstrip("`").endswith("x")  # the innermost frame and the error are kept


def test_burst_is_one_message_and_the_next_carries_the_count(fake_slack) -> None:  # type: ignore[no-untyped-def]
    notifier = alerts.notifier_for(settings_for(fake_slack, cooldown=1))
    for _ in range(100):
        notifier.alert_exception("api GET /x", failure(), service="stockex-api")
    notifier.alert_exception("api GET /other", failure(), service="stockex-api")
    assert notifier.flush(10)
    texts = fake_slack.texts
    assert len(texts) == 2
    assert "in api GET /x" in texts[0] and "in api GET /other" in texts[1]
    time.sleep(1.1)
    notifier.alert_exception("api GET /x", failure(), service="stockex-api")
    assert notifier.flush(10)
    assert len(fake_slack.texts) == 3
    assert "99 more occurrence(s) were held back" in fake_slack.texts[2]
    assert notifier.counters.suppressed == 99


def test_resolved_is_sent_once_and_only_after_a_failure(fake_slack) -> None:  # type: ignore[no-untyped-def]
    notifier = alerts.notifier_for(settings_for(fake_slack))
    notifier.resolve("database")  # nothing was failing: nothing to say
    for _ in range(3):
        notifier.alert_exception("database", failure("gone"))
    notifier.resolve("database")
    notifier.resolve("database")
    assert notifier.flush(10)
    texts = fake_slack.texts
    assert len(texts) == 2
    assert ":white_check_mark:" in texts[1] and "resolved database" in texts[1]
    assert "database#RuntimeError: failing since" in texts[1] and "3 occurrence(s)" in texts[1]
    # in the configured timezone (Asia/Ho_Chi_Minh by default), as the crawl logs write times
    assert re.search(r"failing since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+07:00 ", texts[1]), texts[1]


def test_slack_rate_limit_is_retried_after_retry_after(fake_slack) -> None:  # type: ignore[no-untyped-def]
    fake_slack.rate_limit(times=1, retry_after=1)
    notifier = AlertNotifier(SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url))
    started = time.monotonic()
    notifier.alert("s", "E", "m")
    assert notifier.flush(15)
    assert time.monotonic() - started >= 1.0
    assert fake_slack.requests == 2
    assert len(fake_slack.messages) == 1 and notifier.counters.sent == 1


def test_slack_down_is_logged_never_raised_and_later_alerts_get_through(caplog) -> None:  # type: ignore[no-untyped-def]
    slack = FakeSlack().start()
    slack.down()
    notifier = AlertNotifier(SlackApiSender(slack.token, "#ops", slack.api_base_url))
    with caplog.at_level(logging.WARNING, logger="stockex.alerts"):
        notifier.alert("s", "First", "while slack is down")
        assert notifier.flush(15)
    assert notifier.counters.failed == 1
    assert "could not deliver alert s#First" in caplog.text
    slack.up()
    try:
        notifier.alert("s", "Second", "slack is back")
        assert notifier.flush(15)
        assert ["Second" in t for t in slack.texts] == [True]
    finally:
        slack.stop()


def test_a_hanging_slack_never_blocks_the_caller(fake_slack) -> None:  # type: ignore[no-untyped-def]
    fake_slack.hang(10)
    notifier = AlertNotifier(
        SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url), queue_size=5
    )
    started = time.monotonic()
    for i in range(50):
        notifier.alert(f"s{i}", "E", "m")
    assert time.monotonic() - started < 0.5
    assert not notifier.flush(0.2)
    assert notifier.counters.dropped >= 40  # the bounded queue gives way, the caller never waits
    notifier.discard_pending()


def test_rejected_token_is_counted_not_raised(fake_slack, caplog) -> None:  # type: ignore[no-untyped-def]
    notifier = AlertNotifier(SlackApiSender("xoxb-wrong", "#ops", fake_slack.api_base_url))
    with caplog.at_level(logging.WARNING, logger="stockex.alerts"):
        notifier.alert("s", "E", "m")
        assert notifier.flush(10)
    assert notifier.counters.failed == 1 and fake_slack.messages == []
    assert "invalid_auth" in caplog.text
    assert "xoxb-wrong" not in caplog.text


def test_without_slack_alerts_go_to_the_log_only(caplog) -> None:  # type: ignore[no-untyped-def]
    notifier = AlertNotifier(LogSender(), secrets=(SECRET_KEY,))
    with caplog.at_level(logging.ERROR, logger="stockex.alerts"):
        notifier.alert_exception("crawler asaxu", failure(f"key {SECRET_KEY} password=hunter2"))
        assert notifier.flush(10)
    [record] = [r for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert "*RuntimeError* in crawler asaxu" in record.getMessage()
    assert SECRET_KEY not in caplog.text and "hunter2" not in caplog.text


def test_cooldown_and_incidents_are_shared_through_redis(fake_slack, redis_url) -> None:  # type: ignore[no-untyped-def]
    def process() -> AlertNotifier:  # e.g. two gunicorn workers, or a crawler and an API
        return AlertNotifier(
            SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url),
            RedisAlertState(redis_url),
            cooldown_seconds=1,
        )

    first, second = process(), process()
    for i in range(50):
        (first if i % 2 else second).alert("database", "OperationalError", "refused")
    assert first.flush(10) and second.flush(10)
    assert len(fake_slack.texts) == 1
    time.sleep(1.1)
    first.alert("database", "OperationalError", "refused")
    assert first.flush(10)
    assert "49 more occurrence(s)" in fake_slack.texts[1]
    second.resolve("database")  # the other process sees it working again
    assert second.flush(10)
    assert "resolved database" in fake_slack.texts[2] and "51 occurrence(s)" in fake_slack.texts[2]
    first.resolve("database")
    assert first.flush(10)
    assert len(fake_slack.texts) == 3  # resolved once, not once per process


def test_redis_state_falls_back_to_the_process_when_redis_is_unreachable(fake_slack) -> None:  # type: ignore[no-untyped-def]
    notifier = AlertNotifier(
        SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url),
        RedisAlertState("redis://127.0.0.1:1/0"),
    )
    for _ in range(5):
        notifier.alert("redis", "ConnectionError", "refused")
    notifier.resolve("redis")
    assert notifier.flush(15)
    assert len(fake_slack.texts) == 2 and "resolved redis" in fake_slack.texts[1]


def test_crawler_failure_and_its_resolved(fake_slack) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(fake_slack, webhook=True)
    alerts.crawler_failed("asaxu", failure("tiki answered 503"), window=(1719858240, 1719918180),
                          run_id=42, settings=settings)
    alerts.crawler_failed("asaxu", failure("tiki answered 503"), window=(1719918240, 1719978180),
                          run_id=43, settings=settings)
    alerts.crawler_recovered("btcvnd", run_id=44, settings=settings)  # was not failing
    alerts.crawler_recovered("asaxu", run_id=45, settings=settings)
    assert alerts.flush(10)
    failed, resolved = fake_slack.texts
    assert "*stockex-crawler*" in failed and "*RuntimeError* in crawler asaxu" in failed
    assert "• market: asaxu" in failed and "• run_id: 42" in failed
    assert "• window: 2024-07-02T01:24:00+07:00 .. 2024-07-02T18:03:00+07:00" in failed
    assert "resolved crawler asaxu" in resolved and "2 occurrence(s)" in resolved
    assert "• run_id: 45" in resolved


def airflow_context(exception: BaseException | str | None) -> dict:  # type: ignore[type-arg]
    """The parts of an Airflow 3 task context the callbacks read (RuntimeTaskInstance)."""
    ti = SimpleNamespace(dag_id="tiki_candles", task_id="crawl_asaxu", try_number=3,
                         run_id="scheduled__2024-07-02T00:00:00+00:00", map_index=-1,
                         log_url="http://airflow:8080/dags/tiki_candles/runs/x/tasks/crawl_asaxu")
    return {"ti": ti, "task_instance": ti, "exception": exception,
            "run_id": ti.run_id, "logical_date": "2024-07-02T00:00:00+00:00"}


def test_airflow_failure_callback_is_delivered_before_it_returns(fake_slack) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(fake_slack)
    alerts.airflow_task_failed(airflow_context(failure("upstream 503")), settings)
    [text] = fake_slack.texts  # no flush: the callback waited (the task process exits next)
    assert "*stockex-airflow*" in text
    assert "*RuntimeError* in airflow tiki_candles.crawl_asaxu" in text
    for line in ("• dag: tiki_candles", "• task: crawl_asaxu", "• try_number: 3",
                 "• run_id: scheduled__2024-07-02T00:00:00+00:00"):
        assert line in text
    alerts.airflow_task_succeeded(airflow_context(None), settings)
    assert "resolved airflow tiki_candles.crawl_asaxu" in fake_slack.texts[1]


def test_a_dag_run_stopped_by_its_timeout_is_posted_and_resolved(fake_slack) -> None:  # type: ignore[no-untyped-def]
    """Airflow marks the unfinished tasks of a run ended by dagrun_timeout skipped: no task
    callback runs, so the DAG's own failure callback must tell. A run failed by a task was
    that task's alert and is not posted twice."""
    settings = settings_for(fake_slack)
    dag = SimpleNamespace(dag_id="tiki_candles", dagrun_timeout=timedelta(minutes=45))
    ti = SimpleNamespace(dag_id="tiki_candles", task_id="crawl_market", map_index=0)
    run_id = "scheduled__2024-07-02T00:00:00+00:00"
    alerts.airflow_dag_run_failed({"dag": dag, "run_id": run_id, "reason": "task_failure",
                                   "ti": ti}, settings)
    assert fake_slack.texts == []
    alerts.airflow_dag_run_failed({"dag": dag, "run_id": run_id, "reason": "timed_out",
                                   "ti": ti}, settings)
    [text] = fake_slack.texts
    assert "AirflowRunTimedOut* in airflow tiki_candles" in text
    assert "dagrun_timeout (0:45:00)" in text and "skipped" in text
    assert f"• run_id: {run_id}" in text and "• unfinished_task: crawl_market" in text
    alerts.airflow_dag_run_succeeded({"dag": dag, "run_id": "scheduled__x", "reason": "success"},
                                     settings)
    assert "resolved airflow tiki_candles" in fake_slack.texts[1]


def test_airflow_callback_without_an_exception_object(fake_slack) -> None:  # type: ignore[no-untyped-def]
    alerts.airflow_task_failed(airflow_context("Task timed out"), settings_for(fake_slack))
    assert "AirflowTaskFailed" in fake_slack.texts[0] and "Task timed out" in fake_slack.texts[0]


def test_an_invalid_configuration_is_still_reported_to_its_slack(  # type: ignore[no-untyped-def]
    fake_slack, monkeypatch, tmp_path, caplog
) -> None:
    """The DAG's configured_markets task fails on bad settings, and its callback read them
    again to find Slack: it fell back to the defaults (no Slack) and the failure reached only
    the log. The slack section (file and environment) is read alone then."""
    config = tmp_path / "config.yaml"
    config.write_text(f"slack:\n  base_url: {fake_slack.api_base_url}\n"
                      "crawler:\n  chunk_minutes: lots\n")
    text = _alert_for_a_bad_configuration(fake_slack, monkeypatch, caplog, {
        "STOCKEX_CONFIG": str(config), "STOCKEX__CRAWLER__MARKETS": "[nope]"})
    assert "ConfigError* in airflow tiki_candles" in text
    assert "crawler.chunk_minutes: expected an integer" in text
    assert "alerting with its slack, redis, timezone settings alone" in caplog.text


def test_a_missing_configuration_file_is_still_reported_to_the_environments_slack(  # type: ignore[no-untyped-def]
    fake_slack, monkeypatch, tmp_path, caplog
) -> None:
    """STOCKEX_CONFIG names a file that is not there (a volume not mounted): reading the
    slack section alone read the same missing file, and the alert went to the log only,
    though the environment said where Slack is."""
    text = _alert_for_a_bad_configuration(fake_slack, monkeypatch, caplog, {
        "STOCKEX_CONFIG": str(tmp_path / "missing.yaml"),
        "STOCKEX__SLACK__BASE_URL": fake_slack.api_base_url})
    assert "missing.yaml" in text
    assert "alerting with the environment's slack, redis, timezone settings alone" in caplog.text


def _alert_for_a_bad_configuration(fake_slack, monkeypatch, caplog, env) -> str:  # type: ignore[no-untyped-def]
    """The text of the one alert that a DAG task's failure on an invalid configuration (with
    ``env`` set, and the fake Slack's token and channel #ops in the environment) posts."""
    for name, value in {**env, "STOCKEX__SLACK__TOKEN": fake_slack.token,
                        "STOCKEX__SLACK__CHANNEL": "'#ops'"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(alerts, "_default_settings", None)
    with pytest.raises(ConfigError) as problem:
        load_settings()
    with caplog.at_level(logging.WARNING, logger="stockex.alerts"):
        alerts.airflow_task_failed(airflow_context(problem.value))
    [message] = fake_slack.messages
    assert message.channel == "#ops"
    return str(message.text)


def test_callbacks_never_raise(fake_slack) -> None:  # type: ignore[no-untyped-def]
    alerts.airflow_task_failed({}, settings_for(fake_slack))  # nothing usable in the context
    alerts.airflow_task_failed(None, settings_for(fake_slack))  # type: ignore[arg-type]
    assert "airflow ?.?" in fake_slack.texts[0]


def test_no_message_contains_a_password_token_or_authorization(fake_slack) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(fake_slack, cooldown=0)
    notifier = alerts.notifier_for(settings)
    url = f"mysql+pymysql://stockex:{DB_PASSWORD}@db:3306/stockex"
    leaks = [
        failure(f"(2003) can't connect to {url}"),
        failure(f"jwt.decode({JWT!r}, key={SECRET_KEY!r})"),
        failure(f"headers={{'Authorization': 'Bearer {JWT}', 'Accept': 'json'}}"),
        failure("login(username='bob', password='hunter2')"),
        failure(f"slack said no to {settings.slack.token}"),
    ]
    for i, exc in enumerate(leaks):
        notifier.alert_exception(f"leak {i}", exc, {"Authorization": f"Bearer {JWT}",
                                                    "path": "/api/v1/x?token=abc123"})
    alerts.crawler_failed("asaxu", leaks[0], settings=settings)
    alerts.airflow_task_failed(airflow_context(leaks[1]), settings)
    assert alerts.flush(10)
    assert len(fake_slack.messages) == len(leaks) + 2
    for message in fake_slack.messages:
        body = message.raw
        for secret in (DB_PASSWORD, SECRET_KEY, JWT, JWT.split(".")[1], "hunter2", "abc123",
                       settings.slack.token):
            assert secret not in body, (secret, message.text)
        assert "Bearer" not in body.replace("Bearer ***", "")


def test_secrets_where_the_message_or_traceback_is_cut_do_not_leak(fake_slack) -> None:  # type: ignore[no-untyped-def]
    """The message is clipped at MAX_MESSAGE_CHARS and the traceback to its last
    MAX_TRACEBACK_CHARS; a cut through a credential must not leave part of it readable
    (cut, "...:db-pass-w0" is no longer a URL password, nor "[parameters: ('bob', '$scr" a
    parameters block)."""
    settings = settings_for(fake_slack, cooldown=0)
    notifier = alerts.notifier_for(settings)
    url = f"mysql+pymysql://stockex:{DB_PASSWORD}@db:3306/stockex"
    hash_ = "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
    secret = f"{url} [parameters: ('bob', '{hash_}')]"
    prefixes = range(900, 1000, 3)  # the clip falls in the password, then in the hash
    for prefix in prefixes:
        notifier.alert_exception(f"cut {prefix}", failure("x" * prefix + secret))
    notifier.alert_exception("cut traceback", failure(secret + "y" * 2990))  # keeps its tail
    assert alerts.flush(10)
    assert len(fake_slack.messages) == len(prefixes) + 1
    for message in fake_slack.messages:
        for part in (DB_PASSWORD[:6], DB_PASSWORD[-6:], hash_[:10], hash_[-6:]):
            assert part not in message.raw, (part, message.text[-400:])


def test_an_incident_opened_while_redis_was_down_is_not_alerted_twice(fake_slack) -> None:  # type: ignore[no-untyped-def]
    server = start_redis(private=True)  # stopped by the test
    try:
        notifier = AlertNotifier(
            SlackApiSender(fake_slack.token, "#ops", fake_slack.api_base_url),
            RedisAlertState(server.url),
        )
        server.stop()
        notifier.alert("redis", "ConnectionError", "refused")  # bookkept in the process
        assert notifier.flush(10)
        server.start()
        notifier.alert("redis", "ConnectionError", "refused")  # Redis is back: same incident
        notifier.resolve("redis")
        assert notifier.flush(10)
        texts = fake_slack.texts
        assert len(texts) == 2 and "resolved redis" in texts[1] and "2 occurrence(s)" in texts[1]
    finally:
        server.close()


def run_db_clean(command: list[str], env: dict[str, str], cwd):  # type: ignore[no-untyped-def]
    """``python -m stockex.airflow_db_clean COMMAND`` as docker-compose's airflow-db-clean
    loop runs it: a process of its own, its settings from the environment (``cwd`` has no
    config.yaml)."""
    import os
    import subprocess
    import sys

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKEX")}
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "stockex.airflow_db_clean", *command],
        env={**full_env, **env}, cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )


def test_a_failed_airflow_db_clean_alerts_slack_and_the_next_success_resolves_it(  # type: ignore[no-untyped-def]
    fake_slack, redis_url, tmp_path
) -> None:
    """The compose service's daily `airflow db clean` used to fail into its log only. Each
    run is a process of its own: Redis carries the open incident from the failed day to the
    next day's success. The configuration is partly invalid (as when the DAG's settings are
    broken), and its slack and redis sections still say where to tell."""
    env = {
        "STOCKEX__SLACK__TOKEN": fake_slack.token,
        "STOCKEX__SLACK__BASE_URL": fake_slack.api_base_url,
        "STOCKEX__SLACK__CHANNEL": "'#ops'",
        "STOCKEX__REDIS__URL": redis_url,
        "STOCKEX__CRAWLER__CHUNK_MINUTES": "lots",
    }
    failing = ["sh", "-c", "echo 'Performing cleanup'; "
               "echo 'sqlalchemy.exc.OperationalError: could not connect to airflow-db' >&2; "
               "exit 3"]
    failed = run_db_clean(failing, env, tmp_path)
    assert failed.returncode == 3, failed.stderr
    assert "Performing cleanup" in failed.stdout  # its output still reaches the service's log
    assert "could not connect to airflow-db" in failed.stdout
    [alert] = fake_slack.wait_for(1)
    assert alert.channel == "#ops"
    assert "*stockex-airflow*" in alert.text and "*AirflowDbCleanFailed* in airflow-db-clean" \
        in alert.text
    assert "sh exited with status 3" in alert.text
    assert "could not connect to airflow-db" in alert.text
    assert "alerting with its slack, redis, timezone settings alone" in failed.stderr

    # the next day, still failing: held back by the cooldown
    assert run_db_clean(failing, env, tmp_path).returncode == 3
    succeeded = run_db_clean(["sh", "-c", "echo 'cleaned 12 rows'"], env, tmp_path)
    assert succeeded.returncode == 0 and "cleaned 12 rows" in succeeded.stdout
    messages = fake_slack.wait_for(2)
    assert len(messages) == 2, fake_slack.texts
    assert "resolved airflow-db-clean" in messages[1].text
    assert "2 occurrence(s)" in messages[1].text
    assert run_db_clean(["true"], env, tmp_path).returncode == 0  # nothing open: nothing sent
    assert len(fake_slack.messages) == 2


def test_an_airflow_db_clean_that_cannot_start_alerts_too(fake_slack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"STOCKEX__SLACK__TOKEN": fake_slack.token,
           "STOCKEX__SLACK__BASE_URL": fake_slack.api_base_url}
    result = run_db_clean(["no-such-airflow-binary", "db", "clean"], env, tmp_path)
    assert result.returncode == 127
    assert "cannot run 'no-such-airflow-binary'" in result.stderr
    [alert] = fake_slack.wait_for(1)
    assert "*FileNotFoundError* in airflow-db-clean" in alert.text
    assert "• command: no-such-airflow-binary db clean" in alert.text


def test_a_failed_airflow_db_clean_alert_keeps_the_end_of_a_long_output(  # type: ignore[no-untyped-def]
    fake_slack, tmp_path
) -> None:
    """A traceback's long lines: the alert shows where it ends (the error), not its start."""
    env = {"STOCKEX__SLACK__TOKEN": fake_slack.token,
           "STOCKEX__SLACK__BASE_URL": fake_slack.api_base_url}
    noisy = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do printf 'frame %0200d\\n' $i; done; "
             "echo \"psycopg2.OperationalError: the $(echo last) line\"; exit 1"]
    assert run_db_clean(noisy, env, tmp_path).returncode == 1
    [alert] = fake_slack.wait_for(1)
    assert "psycopg2.OperationalError: the last line" in alert.text
