#!/usr/bin/env bash
# Soak: the processor (release build) under a steady load for DURATION seconds, its resident memory sampled
# every 10 s. The load is the price simulator at RATE events/s over 1000 instruments (with late and
# corrected prices; default 10,000/s, half of the ~20,000/s `tributary bench` measures for the full path
# on this 2-core machine) plus 100 simulated servers' metrics every second, on a private nats-server and a
# fresh database (dropped afterwards) on TEST_DATABASE_URL's server.
#
# Passes when (1) memory is bounded: after the first minute (caches filling, pools opening), RSS never
# exceeds the first minute's peak by more than BOUND_MIB (default 32), and (2) the processor keeps up:
# the backlog at the end is under 10 s of load. Prints the samples and one summary line.
#
# Usage: bash scripts/soak.sh [DURATION_SECS] [RATE]   (defaults 600 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
RATE=${2:-10000}
BOUND_MIB=${BOUND_MIB:-32}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
cargo build --locked --release -q -p tributary
bin="$CARGO_TARGET_DIR/release/tributary"

source scripts/private-stack.sh "tributary_soak_$$"
metrics_port=$(free_port)
export RUST_LOG=warn
for _ in $(seq 50); do "$bin" migrate >/dev/null 2>&1 && break; sleep 0.2; done
"$bin" processor --metrics-listen "127.0.0.1:$metrics_port" 2>"$tmp/processor.log" &
processor=$!
pids+=($processor)
"$bin" gatherer prices --instruments 1000 --rate "$RATE" --quiet 2>"$tmp/prices.log" &
pids+=($!)
"$bin" gatherer metrics --servers 100 --interval 1s 2>"$tmp/metrics.log" &
pids+=($!)

metric() { # the sum of a Prometheus series' samples whose line starts with $1
  curl -sf "http://127.0.0.1:$metrics_port/metrics" | awk -v p="$1" 'index($0, p) == 1 { s += $NF } END { print s + 0 }'
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$processor/status"; }

echo "    t_s  rss_mib  committed_events  backlog_prices"
start=$(date +%s)
warm_peak=0
later_peak=0
samples=0
while :; do
  sleep 10
  t=$(( $(date +%s) - start ))
  kill -0 "$processor" 2>/dev/null || { echo "soak: the processor died" >&2; tail -20 "$tmp/processor.log" >&2; exit 1; }
  rss=$(rss_kib)
  committed=$(metric 'tributary_events_total{consumer="prices",outcome="processed"}')
  backlog=$(metric 'tributary_consumer_pending{consumer="prices"}')
  printf '%7d  %7s  %16.0f  %14.0f\n' "$t" "$(mib "$rss")" "$committed" "$backlog"
  if [ "$t" -le 60 ]; then
    [ "$rss" -gt "$warm_peak" ] && warm_peak=$rss
  else
    [ "$rss" -gt "$later_peak" ] && later_peak=$rss
  fi
  samples=$((samples + 1))
  [ "$t" -ge "$DURATION" ] && break
done

growth_mib=$(mib $((later_peak - warm_peak)))
ok=1
awk -v g="$growth_mib" -v b="$BOUND_MIB" 'BEGIN { exit !(g <= b) }' || ok=0
awk -v q="$backlog" -v r="$RATE" 'BEGIN { exit !(q < 10 * r) }' || ok=0
printf 'soak: %d s at %d prices/s + 100 servers/s, %d samples: RSS first-minute peak %s MiB, later peak %s MiB (growth %s MiB, bound %d MiB); %.0f events committed; final backlog %.0f: %s\n' \
  "$DURATION" "$RATE" "$samples" "$(mib "$warm_peak")" "$(mib "$later_peak")" \
  "$growth_mib" "$BOUND_MIB" "$committed" "$backlog" "$([ $ok = 1 ] && echo PASS || echo FAIL)"
[ "$ok" = 1 ]
