#!/usr/bin/env bash
# The local Kafka-protocol broker: tansu with its SQLite storage engine.
#   ensure        build tansu into the cache if missing; print `export TANSU_BIN=...`
#   run PORT DIR  run the broker in the foreground on 127.0.0.1:PORT, data in DIR/tansu.db
#                 (stop it with SIGINT: SIGTERM loses in-flight writes, see docs/DEPENDENCIES.md)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

TANSU_VERSION=0.6.0
# Only the SQLite engine ("libsql" feature): the one that keeps acknowledged records
# and committed offsets across a restart and reports correct high watermarks.
TANSU_FEATURES=libsql
TANSU_HOME="$CACHE_DIR/tansu-$TANSU_VERSION-$TANSU_FEATURES"
TANSU_BIN="$TANSU_HOME/bin/tansu"

ensure() {
  if [ ! -x "$TANSU_BIN" ]; then
    apt_install cmake pkg-config libssl-dev protobuf-compiler
    log "building tansu $TANSU_VERSION (features: $TANSU_FEATURES); a cold build takes 15-30 min"
    local partial="$TANSU_HOME.partial"
    rm -rf "$partial"
    run_logged "$CACHE_DIR/logs/tansu-build.log" \
      cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
        --root "$partial"
    rm -rf "$TANSU_HOME"
    mv "$partial" "$TANSU_HOME"
    log "tansu ready: $TANSU_BIN"
  fi
  echo "export TANSU_BIN=$TANSU_BIN"
}

run() {
  local port=${1:?usage: tansu.sh run PORT DATA_DIR} dir=${2:?usage: tansu.sh run PORT DATA_DIR}
  [ -x "$TANSU_BIN" ] || die "tansu is not built yet: run '$0 ensure' first"
  mkdir -p "$dir"
  cd "$dir"
  exec "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://tansu.db"
}

case "${1:-}" in
  ensure) ensure ;;
  run) shift; run "$@" ;;
  *) die "usage: $0 {ensure|run PORT DATA_DIR}" ;;
esac
