#!/usr/bin/env bash
# `make run`: the API and the crawler loop on the embedded SQLite default. Ctrl-C stops all.
#
# Tiki-Exchange cannot be reached from every machine, so unless an upstream is configured
# (STOCKEX__TIKI__BASE_URL, $STOCKEX_CONFIG or ./config.yaml), this also starts `stockex sim`,
# the local stand-in that speaks the same k-line API, and points only this crawler at it.
# The configured default (https://api.tiki.vn) is untouched.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM

if [ -z "${STOCKEX__TIKI__BASE_URL:-}" ] && [ -z "${STOCKEX_CONFIG:-}" ] && [ ! -f config.yaml ]; then
  sim_port="${STOCKEX_SIM_PORT:-5011}"
  "$BIN/stockex" sim --port "$sim_port" &
  pids+=($!)
  export STOCKEX__TIKI__BASE_URL="http://127.0.0.1:$sim_port"
  # A short history for the demo instead of the backfill from crawler.start (2024-01-01).
  if [ -z "${STOCKEX__CRAWLER__START:-}" ]; then
    export STOCKEX__CRAWLER__START="'$(date -u -d '2 days ago' +%Y-%m-%dT%H:%M:00+00:00)'"
  fi
  echo "make run: crawling the local simulator at $STOCKEX__TIKI__BASE_URL (set STOCKEX__TIKI__BASE_URL for the real exchange)" >&2
fi

"$BIN/stockex" serve &
pids+=($!)
"$BIN/stockex" crawl &
pids+=($!)
echo "stockex API on http://${STOCKEX__API__HOST:-127.0.0.1}:${STOCKEX__API__PORT:-5010} (Swagger UI at /api/docs); crawler running" >&2
wait -n
