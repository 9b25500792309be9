"""docker-compose.yml and the Jenkinsfile say what issue 5's deployment section asks for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from stockex.api import MAX_BODY_BYTES
from stockex.config import DEFAULT_SECRET_KEY, load_settings
from stockex.testing import nginx_binary, nginx_command, render_nginx_template

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING_WITH_HEALTH = ("mysql", "redis", "api", "proxy", "airflow-db",
                            "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor")
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "stockex.conf.template"
# what the nginx image's entrypoint replaces in it (compose's `proxy` environment)
NGINX_VARIABLES = ("NGINX_PORT", "STOCKEX_API_ADDRESS", "NGINX_LOCAL_RESOLVERS")


def with_defaults(value: str) -> str:
    """Compose interpolation with no .env: ${VAR:-default} -> default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_the_stockex_environment_is_a_valid_configuration() -> None:
    environ = {k: with_defaults(str(v)) for k, v in COMPOSE["x-stockex-env"].items()}
    settings = load_settings(environ=environ)
    assert settings.database.url.startswith("mysql+pymysql://")
    assert settings.redis.url == "redis://redis:6379/0"
    assert settings.api.login_rate_limit == "10 per minute"
    assert settings.api.password_rate_limit == "30 per minute"
    assert settings.api.cors_origins == ()
    assert settings.api.proxy_hops == 1  # clients reach the API through the nginx `proxy` only
    assert settings.slack.channel == "#stockex-alerts"
    # no secret in .env: the API refuses to start instead of signing with a known key
    assert settings.secret_key == DEFAULT_SECRET_KEY


def test_proxy_hops_set_in_env_reaches_the_api() -> None:
    """README, Deployment: STOCKEX_PROXY_HOPS in .env is the number of proxies the API trusts,
    1 for compose's nginx (2 with a TLS load balancer in front of it)."""
    value = str(COMPOSE["x-stockex-env"]["STOCKEX__API__PROXY_HOPS"])
    assert "${STOCKEX_PROXY_HOPS:-1}" in value
    environ = {k: with_defaults(str(v)) for k, v in COMPOSE["x-stockex-env"].items()}
    environ["STOCKEX__API__PROXY_HOPS"] = value.replace("${STOCKEX_PROXY_HOPS:-1}", "2")
    assert load_settings(environ=environ).api.proxy_hops == 2
    assert SERVICES["api"]["environment"]["STOCKEX__API__PROXY_HOPS"] == value
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^STOCKEX_PROXY_HOPS=1$", example, re.MULTILINE)


def test_clients_reach_the_api_only_through_the_nginx_proxy() -> None:
    """A few clients that send half a request and stop held every gunicorn thread: the API
    is behind nginx (tests/e2e/test_proxy.py), which alone publishes the API's port, so the
    X-Forwarded-For the API trusts (proxy_hops 1) is always nginx's."""
    proxy, api = SERVICES["proxy"], SERVICES["api"]
    assert re.fullmatch(r"nginx:\d+(\.\d+)?", proxy["image"])  # official, pinned major
    assert proxy["ports"] == ["${STOCKEX_API_PORT:-5010}:5010"]
    assert "ports" not in api
    published = sorted(name for name, service in SERVICES.items() if "ports" in service)
    assert published == ["airflow-apiserver", "proxy"]
    env = proxy["environment"]
    assert env["NGINX_PORT"] == "5010" and env["STOCKEX_API_ADDRESS"] == "api:5010"
    assert env["NGINX_ENTRYPOINT_LOCAL_RESOLVERS"] == "1"
    # the API listens on 5010 in its container (Dockerfile) and its healthcheck asks it there
    assert "--bind 0.0.0.0:5010" in (ROOT / "Dockerfile").read_text()
    assert "127.0.0.1:5010/ready" in " ".join(api["healthcheck"]["test"])
    source, target, mode = proxy["volumes"][0].split(":")
    assert (ROOT / source).resolve() == NGINX_TEMPLATE and mode == "ro"
    # the image renders /etc/nginx/templates/X.template into conf.d/X; default.conf replaces
    # its welcome page
    assert target == "/etc/nginx/templates/default.conf.template"
    assert proxy["depends_on"]["api"]["condition"] == "service_started"
    assert proxy["restart"] == "unless-stopped"
    assert "http://127.0.0.1:5010/health" in proxy["healthcheck"]["test"]
    assert "STOCKEX_API_PORT=5010" in (ROOT / ".env.example").read_text()


def test_the_nginx_template_uses_only_the_variables_compose_sets() -> None:
    """The image's entrypoint replaces $NAME and ${NAME} wherever NAME is set in the
    container's environment: only the three documented ones may look like that; nginx's own
    variables are lower case (the container's environment is upper case)."""
    text = NGINX_TEMPLATE.read_text()
    config = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert set(re.findall(r"\$\{?([A-Z]\w*)", config)) == set(NGINX_VARIABLES)
    assert all(name.islower() for name in re.findall(r"\$\{?([a-z]\w*)", config))
    # the limit nginx answers 413 for is the API's (MAX_BODY_BYTES)
    size = re.search(r"client_max_body_size (\d+)k;", config)
    assert size and int(size[1]) * 1024 == MAX_BODY_BYTES
    assert f"({MAX_BODY_BYTES} bytes)" in config


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed "
                    "(apt-get install nginx; `make test` installs it)")
def test_nginx_accepts_the_template_rendered_with_compose_values(tmp_path: Path) -> None:
    env = SERVICES["proxy"]["environment"]
    values = {name: str(env[name]) for name in NGINX_VARIABLES if name in env}
    values["NGINX_LOCAL_RESOLVERS"] = "127.0.0.11"  # Docker's DNS, from the container's resolv.conf
    site = render_nginx_template(NGINX_TEMPLATE, values)
    assert "listen 5010;" in site and "set $stockex_api api:5010;" in site
    result = subprocess.run([*nginx_command(tmp_path, site), "-t"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_every_service_is_there_with_health_checks_and_start_order() -> None:
    for name in ("mysql", "redis", "migrate", "api", "proxy", "crawler", "airflow-init",
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


def test_the_dag_retries_set_in_env_reach_every_airflow_process() -> None:
    """README: failed tries retry `STOCKEX_DAG_RETRIES` times. The DAG file reads it from the
    environment where it is parsed (dag-processor, and the scheduler's task processes), so
    compose must pass the .env value through, or setting it there does nothing."""
    airflow = [n for n in SERVICES if n.startswith("airflow-") and n != "airflow-db"]
    assert airflow
    for name in airflow:
        value = str(SERVICES[name]["environment"].get("STOCKEX_DAG_RETRIES"))
        assert "${STOCKEX_DAG_RETRIES" in value and with_defaults(value) == "4", name
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^STOCKEX_DAG_RETRIES=4$", example, re.MULTILINE)


def test_the_retention_set_in_env_reaches_every_airflow_process() -> None:
    """README: .env sets how long crawl_runs rows, task logs and Airflow's records are kept.
    The maintenance DAG reads the first two where it is parsed and runs, airflow-db-clean the
    third: compose must pass each through, or setting it in .env does nothing."""
    airflow = [n for n in SERVICES if n.startswith("airflow-") and n != "airflow-db"]
    assert "airflow-db-clean" in airflow
    assert SERVICES["airflow-db-clean"]["depends_on"]["airflow-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert "airflow db clean" in SERVICES["airflow-db-clean"]["command"][2]
    # through the entry point that alerts Slack on a failure (README: Retention, Runbook)
    assert "python -m stockex.airflow_db_clean" in SERVICES["airflow-db-clean"]["command"][2]
    example = (ROOT / ".env.example").read_text()
    for key, days in (("STOCKEX_CRAWL_RUNS_RETENTION_DAYS", "90"),
                      ("STOCKEX_AIRFLOW_LOG_RETENTION_DAYS", "30"),
                      ("AIRFLOW_DB_RETENTION_DAYS", "30")):
        for name in airflow:
            value = str(SERVICES[name]["environment"].get(key))
            assert f"${{{key}" in value and with_defaults(value) == days, (name, key)
        assert re.search(rf"^{key}={days}$", example, re.MULTILINE), key


def test_jenkinsfile_stages() -> None:
    text = (ROOT / "Jenkinsfile").read_text()
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages == ["Setup", "Lint", "Test", "Build images", "Deploy"]
    assert "--junitxml=" in text and "junit " in text
    deploy = text[text.index("stage('Deploy')"):]
    assert "when { branch 'main' }" in deploy


def _airflow_init(tmp_path: Path, secret: str) -> subprocess.CompletedProcess[str]:
    """airflow-init's command as the container runs it (compose's $$ is a $), with a fake
    `airflow` that only says it ran."""
    script = SERVICES["airflow-init"]["command"]
    assert script[:2] == ["bash", "-c"]
    fake = tmp_path / "airflow"
    fake.write_text("#!/bin/sh\necho \"airflow $*\"\n")
    fake.chmod(0o755)
    return subprocess.run(
        ["bash", "-c", script[2].replace("$$", "$")], capture_output=True, text=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "AIRFLOW__API_AUTH__JWT_SECRET": secret},
        check=False,
    )


def test_airflow_does_not_start_with_a_known_or_short_jwt_secret(tmp_path: Path) -> None:
    # Airflow's jwt_secret signs its REST API tokens: a default shipped in this file would
    # let anyone reaching port 8080 sign an admin token.
    configured = COMPOSE["x-airflow-common"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    for secret in (with_defaults(configured), "short-secret"):
        result = _airflow_init(tmp_path, secret)
        assert result.returncode == 1, secret
        assert "set AIRFLOW_JWT_SECRET in .env" in result.stderr
        assert "airflow db migrate" not in result.stdout
    result = _airflow_init(tmp_path, "k" * 32)
    assert result.returncode == 0 and result.stdout == "airflow db migrate\n"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert SERVICES[name]["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully"
        )
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^AIRFLOW_JWT_SECRET=$", example, re.MULTILINE)


def _fake_python(path: Path, ensurepip: bool) -> Path:
    """A python3 for the Makefile's venv step: ``-m venv DIR`` makes DIR/bin/python (a stub
    that accepts anything) and, like Debian's python3 without python3-venv, fails after that
    unless ``ensurepip``."""
    path.write_text(
        "#!/bin/sh\n"
        'mkdir -p "$3/bin" && printf "#!/bin/sh\\n" > "$3/bin/python" && chmod +x "$3/bin/python"\n'
        + ("exit 0\n" if ensurepip else
           'echo "The virtual environment was not created successfully because ensurepip is '
           'not available." >&2; exit 1\n')
    )
    path.chmod(0o755)
    return path


def test_make_makes_the_venv_again_after_python_could_not(tmp_path: Path) -> None:
    """On Debian 12 without python3-venv, `make run` and `make test` fail with Debian's hint
    to install it; after `apt-get install python3-venv` they must make the venv, not take the
    half-made one (no pip) for done."""
    venv = tmp_path / ".venv"

    def make(ensurepip: bool) -> subprocess.CompletedProcess[str]:
        python = _fake_python(tmp_path / f"python-{ensurepip}", ensurepip)
        return subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), f"PYTHON={python}",
             f"VENV={venv}", f"{venv}/bin/python"],
            capture_output=True, text=True, check=False,
        )

    failed = make(ensurepip=False)
    assert failed.returncode != 0 and "ensurepip is not available" in failed.stderr
    made = make(ensurepip=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "-m venv" in made.stdout


def test_the_airflow_ui_can_be_logged_into_and_alerts_link_to_it() -> None:
    """Airflow 3's SimpleAuthManager makes up the admin password on the api-server's first
    start and keeps it in a file: inside the container it was lost (and a new one made) on
    every redeploy, and README did not say where to read it. The log links in Slack alerts
    start with api.base_url, which Airflow takes for http://localhost:8080 when unset."""
    airflow = COMPOSE["x-airflow-common"]
    passwords = Path(airflow["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["airflow-apiserver"]["volumes"])
    volume = mounts.get(str(passwords.parent))
    assert volume in COMPOSE["volumes"], (passwords, mounts)  # a named volume, not the container
    # the image makes the mount point, so the new volume belongs to airflow, not root
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"mkdir -p {passwords.parent}" in dockerfile.split(" AS airflow", 1)[1]
    assert f"cat {passwords}" in (ROOT / "README.md").read_text()
    base_url = airflow["environment"]["AIRFLOW__API__BASE_URL"]
    assert with_defaults(base_url) == "http://localhost:8080" and "AIRFLOW_BASE_URL" in base_url
    assert re.search(r"^AIRFLOW_BASE_URL=", (ROOT / ".env.example").read_text(), re.MULTILINE)


def test_redis_is_capped_and_evicts_only_keys_with_a_ttl() -> None:
    """Cached answers are keyed by their query, so an uncapped Redis grows without bound;
    full, it must evict cached answers (TTL) and never a logout (no TTL, stockex.auth)."""
    command = SERVICES["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "${REDIS_MAXMEMORY:-512mb}"
    assert command[command.index("--maxmemory-policy") + 1].startswith("volatile-")
    assert "REDIS_MAXMEMORY=" in (ROOT / ".env.example").read_text()
