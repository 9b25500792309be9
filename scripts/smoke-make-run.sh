#!/usr/bin/env bash
# Starts `make run` in a scratch copy of the working tree, checks what a user would see first
# (health, Swagger UI, OpenAPI document, markets), and stops it again.
set -euo pipefail
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
export STOCKEX__API__PORT=$port
export STOCKEX_SIM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid make run >"$log" 2>&1 &
pid=$!
trap 'kill -- -$pid 2>/dev/null || true; rm -f "$log"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 600); do
  if curl -fsS "$base/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "make run exited:"; cat "$log"; exit 1; fi
  sleep 1
done
curl -fsS "$base/health" | grep -q '"ok"'
curl -fsS "$base/api/docs" | grep -q 'swagger-ui'
curl -fsS "$base/api/openapi.json" | .venv/bin/python -c 'import json,sys; from openapi_spec_validator import validate; validate(json.load(sys.stdin))' 2>/dev/null \
  || curl -fsS "$base/api/openapi.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["openapi"].startswith("3.")'
curl -fsS "$base/api/v1/markets" | grep -q '"asaxu"'
# The crawler loop fills the database from the simulator; candles appear within a minute.
for _ in $(seq 1 120); do
  if curl -fsS "$base/api/v1/markets/asaxu/candles?period=60&limit=5" | grep -q '"open"'; then
    found=1; break
  fi
  sleep 1
done
if [ -z "${found:-}" ]; then echo "no candles were crawled:"; cat "$log"; exit 1; fi
echo "make run serves /health, /api/docs, /api/openapi.json, /api/v1/markets and crawled candles on $base"
