# syntax=docker/dockerfile:1
# One image for every role of Tributary: `tributary processor`, `tributary api`, `tributary migrate`, ...
# (docker-compose.yml and k8s/ choose the role with the command). Build: docker build -t tributary:local .

# --- build -------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace: every member's manifest is needed to resolve it, and third_party/sqlx-core is the
# patched crate that [patch.crates-io] in Cargo.toml points at.
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of the
# cached target directory in the same step, since cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tributary \
 && install -m 0755 target/release/tributary /usr/local/bin/tributary

# --- run ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to a managed PostgreSQL, NATS with TLS, or an OTLP collector over https.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid tributary --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tributary

# Health checks for docker-compose without curl: curl and libcurl would add about 10 MB of libraries (and
# their CVEs) to an image that otherwise holds one binary, while bash (already in the base image) can
# open a TCP connection itself. `tributary-healthcheck PORT [PATH]` succeeds when 127.0.0.1:PORT accepts
# a connection and, with PATH, answers GET PATH with a 2xx status. Kubernetes uses its own httpGet probes.
COPY --chmod=0755 <<'SH' /usr/local/bin/tributary-healthcheck
#!/bin/bash
set -u
port=${1:?usage: tributary-healthcheck PORT [PATH]}
path=${2:-}
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
[ -z "$path" ] && exit 0
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3 || exit 1
case "$status" in
  "HTTP/1."[01]" 2"*) exit 0 ;;
  *) echo "$status" >&2; exit 1 ;;
esac
SH

COPY --from=builder /usr/local/bin/tributary /usr/local/bin/tributary

# No tributary.toml here: configuration comes from TRIBUTARY_<SECTION>__<FIELD>, NATS_URL, DATABASE_URL,
# OTEL_EXPORTER_OTLP_ENDPOINT, or a file mounted and passed with --config (k8s/base does so).
WORKDIR /app
USER 10001:10001
# The API's default port (`tributary api --listen 0.0.0.0:8080`); other roles serve /metrics and /healthz
# on --metrics-listen.
EXPOSE 8080
ENTRYPOINT ["tributary"]
CMD ["--help"]
