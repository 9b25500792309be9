#!/usr/bin/env bash
# Installs the servers the test suite starts for itself (MariaDB, Redis, nginx for the
# deployment's proxy config) and the browser the Swagger UI test drives, with apt-get, when
# they are missing. Needs root for the install;
# otherwise it says what to install (or which STOCKEX_TEST_*_URL to set) and fails.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if [ -z "${STOCKEX_TEST_MYSQL_URL:-}" ] && ! have mariadbd && ! have mysqld; then
  missing+=(mariadb-server)
fi
if [ -z "${STOCKEX_TEST_REDIS_URL:-}" ] && ! have redis-server; then
  missing+=(redis-server)
fi
if ! have chromium; then
  missing+=(chromium)
fi
if ! have nginx; then
  missing+=(nginx)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "stockex: missing system packages: ${missing[*]}" >&2
  echo "stockex: install them (sudo apt-get install ${missing[*]}) or set STOCKEX_TEST_MYSQL_URL / STOCKEX_TEST_REDIS_URL to external servers" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' own services are not started here (no init system in CI); tests start theirs.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
