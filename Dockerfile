# syntax=docker/dockerfile:1
# Two images from one file:
#   app     - the stockex package: API (gunicorn or granian), migrations, crawler loop, CLI
#   airflow - Apache Airflow 3 with stockex installed, for the tiki_candles DAG
ARG PYTHON_VERSION=3.11
ARG AIRFLOW_VERSION=3.3.2

FROM python:${PYTHON_VERSION}-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY cron_jobs ./cron_jobs
RUN pip install '.[granian]' && useradd --system --uid 10001 stockex
USER stockex
EXPOSE 5010
# API_SERVER picks the WSGI server: gunicorn (the default) or granian (15-30 % less CPU per
# request, keep-alive; see benchmarks/orders.py). Workers come from the environment
# (GUNICORN_WORKERS/GUNICORN_THREADS, or granian's own GRANIAN_WORKERS and
# GRANIAN_BLOCKING_THREADS), see docker-compose.yml. No server access log: stockex logs one
# line per request itself, with its request id.
CMD ["sh", "-c", "if [ \"${API_SERVER:-gunicorn}\" = granian ]; then exec granian --interface wsgi --factory --no-log --host 0.0.0.0 --port 5010 --respawn-failed-workers stockex.api:create_app; else exec gunicorn --bind 0.0.0.0:5010 --workers ${GUNICORN_WORKERS:-4} --threads ${GUNICORN_THREADS:-4} 'stockex.api:create_app()'; fi"]

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/stockex/
COPY --chown=airflow:root src /opt/stockex/src
RUN pip install --no-cache-dir /opt/stockex
# The mount point of the airflow-auth volume (the web UI's password file, docker-compose.yml):
# made here so that the new volume belongs to the airflow user, not to root.
RUN mkdir -p /opt/airflow/auth
