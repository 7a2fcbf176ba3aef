#!/usr/bin/env bash
# Processors killed with SIGKILL mid-ingest, at scale: EVENTS prices over 1000 instruments (with
# corrections, repeats and late data) plus one metric sample per 20 prices, while processor processes are
# killed KILLS times (each time with work in hand and after a commit since the last kill) and restarted;
# once with one processor, once with two replicas sharing the consumers. Then every stored value is
# compared with the batch computation over what the streams hold: 0 lost, 0 duplicated, 0 different.
# These are the tests `faults::*sigkill*` of the suite (which run 20,000 events and 3 kills), scaled up.
#
# The processors are a release build (TRIBUTARY_BIN); the test that drives and checks them is not.
#
# Usage: bash scripts/chaos.sh [EVENTS] [KILLS]   (defaults 1000000 20; CHAOS_SEED=n replays a run)
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_EVENTS=${1:-1000000} CHAOS_KILLS=${2:-20}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# The tests start the pinned nats-server (local/install-nats-server.sh), as scripts/test.sh does.
TRIBUTARY_NATS_SERVER="${TRIBUTARY_NATS_SERVER:-$(bash local/install-nats-server.sh)}"
export TRIBUTARY_NATS_SERVER
cargo build --locked --release -q -p tributary
export TRIBUTARY_BIN="$CARGO_TARGET_DIR/release/tributary"
cargo test --locked -p tributary --test it -- --exact --nocapture --test-threads=1 \
  faults::a_processor_killed_with_sigkill_mid_ingest_loses_and_duplicates_nothing \
  faults::two_replicas_killed_with_sigkill_mid_ingest_lose_and_duplicate_nothing 2>&1 |
  grep -E "^chaos|^test |test result|panicked|assert"
