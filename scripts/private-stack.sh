# Sourced by the scripts/measure-*.sh scripts: builds the release binary, starts a private nats-server
# (JetStream, file storage in a temp dir, a free port) and names a fresh database on the local PostgreSQL
# (TEST_DATABASE_URL's server), all removed on exit.
#
# After sourcing: $bin (the binary), $work (the temp dir), $admin (the maintenance URL), $db; NATS_URL,
# DATABASE_URL and RUST_LOG=warn exported; free_port prints a free TCP port. Append the pids of processes
# the script starts to stop_pids; define before_drop to run something before the database is dropped.
admin=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p tributary
bin="$target/release/tributary"
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
db="tributary_measure_$$"
nats-server -a 127.0.0.1 -p "$port" -js -sd "$work" >/dev/null 2>&1 &
stop_pids=($!)
cleanup() {
  for pid in "${stop_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if declare -F before_drop >/dev/null; then before_drop || true; fi
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
base=${admin%%\?*}
query=""
[ "$base" != "$admin" ] && query="?${admin#*\?}"
export NATS_URL="nats://127.0.0.1:$port" DATABASE_URL="${base%/*}/$db$query" RUST_LOG=warn
