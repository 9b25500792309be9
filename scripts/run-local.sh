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
# Wait (up to 10 s) until HOST:PORT accepts connections, or until process PID has exited.
listening() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

if [ -z "${STOCKEX__TIKI__BASE_URL:-}" ] && [ -z "${STOCKEX_CONFIG:-}" ] && [ ! -f config.yaml ]; then
  sim_port="${STOCKEX_SIM_PORT:-5011}"
  "$BIN/stockex" sim --port "$sim_port" &
  pids+=($!)
  listening 127.0.0.1 "$sim_port" "$!" || true  # the crawler's first request finds it up
  export STOCKEX__TIKI__BASE_URL="http://127.0.0.1:$sim_port"
  # A short history for the demo instead of the backfill from crawler.start (2024-01-01).
  if [ -z "${STOCKEX__CRAWLER__START:-}" ]; then
    export STOCKEX__CRAWLER__START="'$(date -u -d '2 days ago' +%Y-%m-%dT%H:%M:00+00:00)'"
  fi
  echo "make run: crawling the local simulator at $STOCKEX__TIKI__BASE_URL (set STOCKEX__TIKI__BASE_URL for the real exchange)" >&2
fi

"$BIN/stockex" serve &
pids+=($!)
api_pid=$!
"$BIN/stockex" crawl &
pids+=($!)
api_host="${STOCKEX__API__HOST:-127.0.0.1}" api_port="${STOCKEX__API__PORT:-5010}"
[ "$api_host" = 0.0.0.0 ] && probe_host=127.0.0.1 || probe_host="$api_host"
if listening "$probe_host" "$api_port" "$api_pid"; then  # say so once it is true
  echo "stockex API on http://$api_host:$api_port (Swagger UI at /api/docs); crawler running" >&2
fi
wait -n
