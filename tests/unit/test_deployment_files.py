"""docker-compose.yml and the Jenkinsfile say what issue 5's deployment section asks for."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stockex.config import DEFAULT_SECRET_KEY, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING_WITH_HEALTH = ("mysql", "redis", "api", "airflow-db", "airflow-apiserver",
                            "airflow-scheduler", "airflow-dag-processor")


def with_defaults(value: str) -> str:
    """Compose interpolation with no .env: ${VAR:-default} -> default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_stockex_environment_is_a_valid_configuration() -> None:
    environ = {k: with_defaults(str(v)) for k, v in COMPOSE["x-stockex-env"].items()}
    settings = load_settings(environ=environ)
    assert settings.database.url.startswith("mysql+pymysql://")
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.api.login_rate_limit == "10 per minute"
    assert settings.api.cors_origins == ()
    assert settings.slack.channel == "#stockex-alerts"
    # no secret in .env: the API refuses to start instead of signing with a known key
    assert settings.secret_key == DEFAULT_SECRET_KEY


def test_every_service_is_there_with_health_checks_and_start_order() -> None:
    for name in ("mysql", "redis", "migrate", "api", "crawler", "airflow-init",
                 "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert name in SERVICES, name
    for name in LONG_RUNNING_WITH_HEALTH:
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["migrate"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    for name in ("api", "crawler"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert SERVICES["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert "GUNICORN_WORKERS" in SERVICES["api"]["environment"]


def test_one_crawler_by_default_the_dag_and_the_loop_on_request() -> None:
    """Airflow's DAG crawls (unpaused at creation); the loop would only race it for the
    market's lock, so it runs only with its profile."""
    assert SERVICES["crawler"]["profiles"] == ["standalone-crawler"]
    assert all("profiles" not in SERVICES[name] for name in SERVICES if name != "crawler")
    airflow_env = SERVICES["airflow-scheduler"]["environment"]
    assert str(airflow_env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"]).lower() == "false"
    assert {"mysql-data", "redis-data", "airflow-db-data"} <= set(COMPOSE["volumes"])


def test_jenkinsfile_stages() -> None:
    text = (ROOT / "Jenkinsfile").read_text()
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages == ["Setup", "Lint", "Test", "Build images", "Deploy"]
    assert "--junitxml=" in text and "junit " in text
    deploy = text[text.index("stage('Deploy')"):]
    assert "when { branch 'main' }" in deploy
