# Sourced by scripts that run Tributary against servers of their own: a private nats-server on a free
# port (TRIBUTARY_NATS_SERVER, else the pinned one from local/install-nats-server.sh) and a fresh database
# (named $1) on TEST_DATABASE_URL's server (default postgres://postgres@127.0.0.1:5432/postgres); both go,
# with the temporary directory and every process added to `pids`, when the script exits. Sets: tmp, pids,
# NATS_URL, DATABASE_URL, TRIBUTARY_NATS_SERVER (exported), free_port.

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stack_admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
stack_db="$1"
tmp=$(mktemp -d)
pids=()
stack_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$stack_admin" -qc "DROP DATABASE IF EXISTS $stack_db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap stack_cleanup EXIT

stack_nats_port=$(free_port)
TRIBUTARY_NATS_SERVER="${TRIBUTARY_NATS_SERVER:-$(bash local/install-nats-server.sh)}"
export TRIBUTARY_NATS_SERVER
"$TRIBUTARY_NATS_SERVER" -js -sd "$tmp/nats" -a 127.0.0.1 -p "$stack_nats_port" >"$tmp/nats.log" 2>&1 &
pids+=($!)
stack_base=${stack_admin%%\?*}
stack_query=""
[ "$stack_base" != "$stack_admin" ] && stack_query="?${stack_admin#*\?}"
export NATS_URL="nats://127.0.0.1:$stack_nats_port" DATABASE_URL="${stack_base%/*}/$stack_db$stack_query"
