#!/usr/bin/env bash
# Measures the server-metrics path on this machine, against a private nats-server and a fresh database on
# the local PostgreSQL (release build):
#
#   bash scripts/measure-metrics.sh [SERVERS] [SECONDS] [BACKLOG_ROUNDS]
#
# 1. live: the processor runs while `gatherer metrics --servers SERVERS --interval 1s` publishes for SECONDS
#    (3 fields per server: SERVERS×3 samples/s); reports committed samples/s, the consumer's backlog and
#    the commit latency (JetStream arrival → commit) percentiles;
# 2. capacity: BACKLOG_ROUNDS rounds of SERVERS samples published at once, then timed until the processor
#    has committed them all (raw samples, 1m and 1h rollups, latest per host).
# KEEP_DB=1 prints index and table scan counts before the database is dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
servers=${1:-1000}
seconds=${2:-60}
rounds=${3:-100}
source scripts/measure-stack.sh
samples() { psql "$DATABASE_URL" -qtAc "SELECT count(*) FROM metric_samples"; }
wait_for() { while [ "$(samples)" -lt "$1" ]; do sleep 0.2; done; }
mport=$(free_port)
"$bin" processor --metrics-listen "127.0.0.1:$mport" &
proc_pid=$!
pids+=("$proc_pid")

echo "== live: $servers servers every 1 s for $seconds s =="
(
  max=0
  while kill -0 "$proc_pid" 2>/dev/null; do
    p=$(curl -s "127.0.0.1:$mport/metrics" | awk '/^tributary_consumer_pending\{consumer="metrics"/ {print int($2)}')
    [ -n "$p" ] && [ "$p" -gt "$max" ] && max=$p && echo "$max" >"$tmp/max_pending"
    sleep 0.5
  done
) &
t0=$(date +%s.%N)
"$bin" gatherer metrics --servers "$servers" --interval 1s --rounds "$seconds" --seed 1 2>&1 | tail -n 1
expected=$((servers * 3 * seconds))
wait_for "$expected"
t1=$(date +%s.%N)
curl -s "127.0.0.1:$mport/metrics" >"$tmp/live.prom"
python3 - "$expected" "$t0" "$t1" "$tmp/live.prom" "$(cat "$tmp/max_pending" 2>/dev/null || echo 0)" <<'PY'
import re, sys
n, t0, t1, path, max_pending = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
buckets, count = [], 0
for line in open(path):
    m = re.match(r'tributary_commit_latency_seconds_bucket\{consumer="metrics",le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2])))
    m = re.match(r'tributary_commit_latency_seconds_count\{consumer="metrics"\} (\S+)', line)
    if m:
        count = float(m[1])
def q(p):
    for le, c in sorted(buckets):
        if c >= p * count:
            return le
print(f"committed {n} samples in {t1-t0:.1f} s ({n/(t1-t0):,.0f} samples/s offered and kept up with); "
      f"max backlog {max_pending} messages; commit latency p50 <= {q(0.5)*1000:g} ms, p99 <= {q(0.99)*1000:g} ms")
PY

echo "== capacity: $rounds rounds of $servers servers published at once =="
kill "$proc_pid"; wait "$proc_pid" 2>/dev/null || true
before=$(samples)
"$bin" gatherer metrics --servers "$servers" --interval 1ms --rounds "$rounds" --seed 2 2>&1 | tail -n 1
"$bin" processor --metrics-listen "127.0.0.1:$mport" &
proc_pid=$!
pids+=("$proc_pid")
s=$(date +%s.%N)
wait_for $((before + servers * 3 * rounds))
e=$(date +%s.%N)
curl -s "127.0.0.1:$mport/metrics" | awk '
  /^tributary_batch_size_sum\{consumer="metrics"/ {s=$2} /^tributary_batch_size_count\{consumer="metrics"/ {n=$2}
  /^tributary_batch_seconds_sum\{consumer="metrics"/ {t=$2}
  END { if (n) printf "processor: %d batches, %.0f messages per batch, %.1f ms per batch\n", n, s/n, 1000*t/n }'
python3 - $((servers * rounds)) "$s" "$e" <<'PY'
import sys
n, s, e = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"committed {n} messages ({3*n} samples) in {e-s:.2f} s: {n/(e-s):,.0f} messages/s, {3*n/(e-s):,.0f} samples/s")
PY
if [ -n "${KEEP_DB:-}" ]; then
  psql "$DATABASE_URL" -c "SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes ORDER BY 1" \
    -c "SELECT relname, seq_scan, seq_tup_read, last_autoanalyze FROM pg_stat_user_tables ORDER BY 1"
fi
