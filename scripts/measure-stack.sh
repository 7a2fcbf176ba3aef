# Sourced by the measure-*.sh scripts: builds the release binary ($bin), starts a private nats-server and
# a fresh database (private-stack.sh: $DATABASE_URL, $pids, free_port, cleanup on exit) and migrates it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --locked --release -q -p tributary
bin="$CARGO_TARGET_DIR/release/tributary"
source scripts/private-stack.sh "tributary_measure_$$"
export RUST_LOG=warn
"$bin" migrate >/dev/null 2>&1
