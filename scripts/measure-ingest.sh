#!/usr/bin/env bash
# Measures simulator → committed throughput on this machine, against a private nats-server and a fresh
# database on the local PostgreSQL (not a benchmark suite: `tributary bench` is the issue that builds one).
#
#   bash scripts/measure-ingest.sh [EVENTS] [INSTRUMENTS]
#
# 1. publishes EVENTS simulated prices over INSTRUMENTS instruments as fast as JetStream acks them
#    (the gatherer's publish rate);
# 2. starts the processor on that backlog and times until every event is committed with all derived
#    values (the processor's rate).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-200000}
instruments=${2:-1000}
source scripts/measure-stack.sh
t0=$(date +%s.%N)
"$bin" gatherer prices --instruments "$instruments" --rate 10000000 --limit "$events" --late-share 0 --correction-share 0 --seed 1
t1=$(date +%s.%N)
mport=$(free_port)
"$bin" processor --metrics-listen "127.0.0.1:$mport" &
pids+=($!)
start=$(date +%s.%N)
while :; do
  n=$(psql "$DATABASE_URL" -qtAc "SELECT coalesce(sum(points),0) FROM price_series")
  [ "$n" -ge "$events" ] && break
  sleep 0.2
done
end=$(date +%s.%N)
curl -s "127.0.0.1:$mport/metrics" | awk '
  /^tributary_batch_size_sum\{consumer="prices"/ {s=$2} /^tributary_batch_size_count\{consumer="prices"/ {n=$2}
  /^tributary_batch_seconds_sum\{consumer="prices"/ {t=$2}
  END { if (n) printf "processor: %d batches, %.0f events per batch, %.1f ms per batch\n", n, s/n, 1000*t/n }'
python3 - "$events" "$t0" "$t1" "$start" "$end" <<'PY'
import sys
n, t0, t1, s, e = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"published {n} events in {t1-t0:.2f} s: {n/(t1-t0):,.0f} events/s (gatherer → JetStream, acked)")
print(f"committed {n} events in {e-s:.2f} s: {n/(e-s):,.0f} events/s (processor: raw + ret, sma 20/50, ema 12/26, vol 20)")
PY
