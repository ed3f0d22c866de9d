#!/usr/bin/env bash
# The Qdrant engine for local runs and tests: dev/qdrant-dev-server, Qdrant's gRPC API
# and a REST API subset over the real qdrant-edge engine (set QDRANT_URL to use a real
# Qdrant instead).
#   ensure        build the server (cargo, in the cached target dir); print `export QDRANT_DEV_SERVER_BIN=...`
#                 (CHATSTACK_PREBUILT=1 uses an already built one)
#   run PORT DIR [REST_PORT]
#                 serve gRPC on 127.0.0.1:PORT and REST on 127.0.0.1:REST_PORT (default: a free
#                 port, shown in the startup line) with data in DIR, in the foreground (stop: SIGTERM)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# The cached target dir of ci/test.sh and ci/stack.sh (keyed by toolchain): run on its
# own, in a fresh clone or a git worktree, this used to build into ./target, a cold
# qdrant-edge build (~8 CPU-minutes) beside a warm cache.
: "${CARGO_TARGET_DIR:=$CACHE_DIR/cargo-target/rustc-$(rustc --version | cut -d' ' -f2)}"
QDRANT_DEV_SERVER_BIN="${QDRANT_DEV_SERVER_BIN:-$CARGO_TARGET_DIR/debug/qdrant-dev-server}"

ensure() {
  # CHATSTACK_PREBUILT=1: the workspace build (ci/test.sh) already made it; building it
  # alone would compile its dependencies again with a different feature set.
  if [ "${CHATSTACK_PREBUILT:-}" = 1 ] && [ -x "$QDRANT_DEV_SERVER_BIN" ]; then
    echo "export QDRANT_DEV_SERVER_BIN=$QDRANT_DEV_SERVER_BIN"
    return
  fi
  log "building qdrant-dev-server (qdrant-edge takes ~8 CPU-minutes on a cold cache)"
  run_logged "$CACHE_DIR/logs/qdrant-dev-server-build.log" \
    cargo build --manifest-path "$REPO_ROOT/Cargo.toml" -p qdrant-dev-server
  echo "export QDRANT_DEV_SERVER_BIN=$QDRANT_DEV_SERVER_BIN"
}

run() {
  local usage="usage: qdrant.sh run PORT DATA_DIR [REST_PORT]"
  local port=${1:?$usage} dir=${2:?$usage} rest_port=${3:-0}
  [ -x "$QDRANT_DEV_SERVER_BIN" ] || die "qdrant-dev-server is not built: run '$0 ensure' first"
  mkdir -p "$dir"
  exec "$QDRANT_DEV_SERVER_BIN" --listen "127.0.0.1:$port" --rest-listen "127.0.0.1:$rest_port" --data-dir "$dir"
}

case "${1:-}" in
  ensure) ensure ;;
  run) shift; run "$@" ;;
  *) die "usage: $0 {ensure|run PORT DATA_DIR [REST_PORT]}" ;;
esac
