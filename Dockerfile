# syntax=docker/dockerfile:1
# Two images from one file:
#   app     - the stockex package: API (gunicorn), migrations, crawler loop, CLI
#   airflow - Apache Airflow 3 with stockex installed, for the tiki_candles DAG
ARG PYTHON_VERSION=3.11
ARG AIRFLOW_VERSION=3.3.2

FROM python:${PYTHON_VERSION}-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY cron_jobs ./cron_jobs
RUN pip install . && useradd --system --uid 10001 stockex
USER stockex
EXPOSE 5010
# Workers come from the environment (GUNICORN_WORKERS), see docker-compose.yml.
# No gunicorn access log: stockex logs one line per request itself, with its request id.
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:5010 --workers ${GUNICORN_WORKERS:-4} --threads ${GUNICORN_THREADS:-4} 'stockex.api:create_app()'"]

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/stockex/
COPY --chown=airflow:root src /opt/stockex/src
RUN pip install --no-cache-dir /opt/stockex
