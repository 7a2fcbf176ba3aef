#!/usr/bin/env bash
# The decoder fuzz campaign at scale: the proptest properties of broker/tests/fuzz.rs (every event
# decoder: arbitrary bytes, mutated valid payloads in JSON and MessagePack with any content type, any
# subject) and gatherer/tests/fuzz.rs (the streaming ports reader, CSV lines, the numbers reader), CASES
# cases each; then 10,000 malformed payloads through a real NATS and processor
# (`faults::ten_thousand_malformed…`). The suite runs the same properties with 256 and 128 cases.
#
# Usage: bash scripts/fuzz.sh [CASES]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES=${1:-100000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tributary/target}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# The tests start the pinned nats-server (local/install-nats-server.sh), as scripts/test.sh does.
TRIBUTARY_NATS_SERVER="${TRIBUTARY_NATS_SERVER:-$(bash local/install-nats-server.sh)}"
export TRIBUTARY_NATS_SERVER
start=$(date +%s)
cargo test --locked -p tributary-broker -p tributary-gatherer --test fuzz 2>&1 | grep -E "^test |test result|panicked|minimal"
echo "fuzz: $PROPTEST_CASES cases per property, $(( $(date +%s) - start )) s"
cargo test --locked -p tributary --test it -- --nocapture faults::ten_thousand_malformed 2>&1 |
  grep -E "^malformed|^test |test result|panicked"
