#!/usr/bin/env bash
# Measures the processor's memory over a long ingest (issue 7: "processor RSS flat over 10 M events"),
# against a private nats-server and a fresh database on the local PostgreSQL.
#
#   bash scripts/measure-rss.sh [EVENTS] [INSTRUMENTS]     # defaults: 10000000 events, 1000 instruments
#
# The simulator publishes EVENTS prices as fast as JetStream acks them while the processor consumes them;
# every 5 s this prints the events committed so far and the processor's resident set (VmRSS) and peak
# (VmHWM), then the figures at each tenth of the run. Flat means the RSS stops growing once the caches
# (tail cache, batch buffers) are warm, whatever the number of events.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
instruments=${2:-1000}
admin=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p tributary
bin="$target/release/tributary"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
db="tributary_rss_$$"
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work" >/dev/null 2>&1 &
nats_pid=$!
cleanup() {
  kill "$nats_pid" 2>/dev/null || true
  [ -n "${gen_pid:-}" ] && kill "$gen_pid" 2>/dev/null || true
  [ -n "${proc_pid:-}" ] && kill "$proc_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
base=${admin%%\?*}
query=""
[ "$base" != "$admin" ] && query="?${admin#*\?}"
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
export NATS_URL="nats://127.0.0.1:$port" DATABASE_URL="${base%/*}/$db$query" RUST_LOG=warn
"$bin" migrate >/dev/null 2>&1
"$bin" processor &
proc_pid=$!
"$bin" gatherer prices --instruments "$instruments" --rate 10000000 --limit "$events" --late-share 0.01 --correction-share 0 \
  --seed 1 >/dev/null 2>&1 &
gen_pid=$!
start=$(date +%s)
echo "seconds committed rss_mib peak_mib"
while :; do
  n=$(psql "$DATABASE_URL" -qtAc "SELECT coalesce(sum(points),0) FROM price_series")
  rss=$(awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$proc_pid/status")
  hwm=$(awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$proc_pid/status")
  echo "$(( $(date +%s) - start )) $n $rss $hwm"
  [ "$n" -ge "$events" ] && break
  sleep 5
done
