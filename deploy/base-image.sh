#!/usr/bin/env bash
# The base image of deploy/Dockerfile built from Debian packages, for hosts
# that reach no container registry (air gap, TLS-inspecting proxy) but do
# reach a Debian mirror and a Python package index. Run as root, with a
# Docker engine running (deploy/engine.sh starts one).
#
#   bash deploy/base-image.sh                      # -> medfed-base:bookworm
#   bash deploy/base-image.sh --tag my/base:1 --rebuild
#   MEDFED_BASE_IMAGE=medfed-base:bookworm docker compose build
#
# What it builds: Debian bookworm (minbase, debootstrap) with python3 (3.11),
# pip and venv, the same interpreter as python:3.11-slim. It carries over from
# this host what `pip install` inside `docker build` needs to work as it works
# here:
#   - the host's CA bundle (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, PIP_CERT or
#     /etc/ssl/certs/ca-certificates.crt), so a TLS-inspecting proxy's CA is
#     trusted by pip and Python inside the image (/etc/ssl/certs/host-ca-bundle.pem);
#   - the host's pip settings that make sense in a container: index-url,
#     extra-index-url and trusted-host with http(s) addresses, and timeout
#     (written to /etc/pip.conf; file:// indexes are left out, they are
#     folders of this host);
#   - a torch wheel from pip's find-links folders, when one matches
#     $TORCH_VERSION and the image's Python: pre-installed, so the Dockerfile's
#     `pip install torch==...` is already satisfied and no multi-GB CUDA build
#     is downloaded.
# Proxies: set HTTP(S)_PROXY for dockerd and in ~/.docker/config.json
# ("proxies") as Docker documents; nothing here changes them.
# Environment: MEDFED_DEBIAN_MIRROR (default: the mirror apt on this host uses
# when it is a Debian one, else http://deb.debian.org/debian), TORCH_VERSION
# (2.13.0). Idempotent: an existing image is kept unless --rebuild.
set -euo pipefail

TAG=medfed-base:bookworm
SUITE=bookworm
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
rebuild=0
while [ $# -gt 0 ]; do
  case $1 in
    --tag) TAG=$2; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    -h | --help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "deploy/base-image.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "base-image: $*"; }
die() { echo "deploy/base-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it)"
command -v debootstrap >/dev/null || die "debootstrap is missing: bash deploy/engine.sh installs it"
docker info >/dev/null 2>&1 || die "no Docker engine answers: bash deploy/engine.sh starts one"

if [ "$rebuild" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG is there (--rebuild to make it again)"
  exit 0
fi

# -- what to carry over from this host -------------------------------------------
ca_bundle=""
for f in "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$f" ] && [ -s "$f" ]; then ca_bundle=$f; break; fi
done
[ -n "$ca_bundle" ] || die "no CA bundle found on this host (set SSL_CERT_FILE)"

mirror=${MEDFED_DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && grep -qs '^ID=debian' /etc/os-release; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

pip_cmd=$(command -v pip3 || command -v pip || true)
pip_get() { [ -n "$pip_cmd" ] && "$pip_cmd" config get "$1" 2>/dev/null || true; }
http_only() { tr ' ' '\n' | { grep -E '^https?://' || true; } | tr '\n' ' ' | sed 's/ $//'; }
index_url=$(pip_get global.index-url | http_only)
extra_index=$(pip_get global.extra-index-url | http_only)
trusted_host=$(pip_get global.trusted-host)
timeout=$(pip_get global.timeout)
[ -n "$timeout" ] || timeout=${PIP_DEFAULT_TIMEOUT:-}
wheel=""
for d in $(pip_get global.find-links) ${PIP_FIND_LINKS:-}; do
  [ -d "$d" ] || continue
  w=$(ls "$d"/torch-"$TORCH_VERSION"*-cp311-cp311-*"$(uname -m)".whl 2>/dev/null | head -1 || true)
  if [ -n "$w" ]; then wheel=$w; break; fi
done

# -- the root file system -----------------------------------------------------------
root=$(mktemp -d)
cid=""
cleanup() {
  rm -rf "$root"
  [ -z "$cid" ] || docker rm -f "$cid" >/dev/null 2>&1 || true
}
trap cleanup EXIT
keyring=()
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
say "debootstrap $SUITE from $mirror (a few minutes)"
debootstrap "${keyring[@]}" --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "debootstrap failed (log above)"; }
rm -f "$root.log"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED # a container's system Python is the app's
ln -sf python3 "$root/usr/bin/python"
ln -sf pip3 "$root/usr/bin/pip"
cp "$ca_bundle" "$root/etc/ssl/certs/host-ca-bundle.pem"
{
  echo "[global]"
  echo "cert = /etc/ssl/certs/host-ca-bundle.pem"
  [ -z "$index_url" ] || echo "index-url = $index_url"
  [ -z "$extra_index" ] || echo "extra-index-url = $extra_index"
  [ -z "$trusted_host" ] || echo "trusted-host = $trusted_host"
  [ -z "$timeout" ] || echo "timeout = $timeout"
} >"$root/etc/pip.conf"

changes=(
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.pem'
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca-bundle.pem'
  --change 'ENV PIP_ROOT_USER_ACTION=ignore'
  --change 'ENV LANG=C.UTF-8'
  --change 'CMD ["python3"]'
)
say "importing the file system as $TAG"
bare="$TAG-bare"
tar -C "$root" -c . | docker import "${changes[@]}" - "$bare" >/dev/null
if [ -n "$wheel" ]; then
  say "pre-installing $(basename "$wheel")"
  cid=$(docker create "$bare" sh -c "pip install -q /tmp/$(basename "$wheel") && rm /tmp/*.whl")
  docker cp "$wheel" "$cid:/tmp/"
  docker start -a "$cid"
  docker commit "${changes[@]}" "$cid" "$TAG" >/dev/null
  docker rm "$cid" >/dev/null && cid=""
  docker rmi "$bare" >/dev/null
else
  say "no torch-$TORCH_VERSION wheel in pip's find-links: the Dockerfile installs torch from the index"
  docker tag "$bare" "$TAG" && docker rmi "$bare" >/dev/null
fi
docker run --rm "$TAG" python -c "import ssl, sys; assert sys.version_info[:2] == (3, 11), sys.version; ssl.create_default_context()" \
  || die "$TAG: python 3.11 with TLS does not run"
say "$TAG built ($(docker image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))${wheel:+, torch from $(basename "$wheel")}"
