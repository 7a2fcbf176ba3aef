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
. scripts/private-stack.sh
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
"$bin" migrate >/dev/null 2>&1
"$bin" processor &
proc_pid=$!
stop_pids+=("$proc_pid")
"$bin" gatherer prices --instruments "$instruments" --rate 10000000 --limit "$events" --late-share 0.01 --correction-share 0 \
  --seed 1 >/dev/null 2>&1 &
stop_pids+=($!)
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
