#!/usr/bin/env bash
# `make run`: the API on the embedded SQLite default. Ctrl-C stops everything it started.
set -euo pipefail
BIN="${VENV:-.venv}/bin"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM

"$BIN/stockex" serve &
pids+=($!)
echo "stockex API on http://${STOCKEX__API__HOST:-127.0.0.1}:${STOCKEX__API__PORT:-5010} (Swagger UI at /api/docs)" >&2
wait -n
