#!/usr/bin/env bash
# Benchmarks (not part of ci/test.sh: they take minutes and want a quiet machine).
# Builds the real dependencies if missing, then runs the benchmarks in release mode:
#   ci/bench.sh [gateway|handlers|pipeline|tracing|all]
# Everything runs on tansu's SQLite engine (the stack's broker); gateway ingest and the
# pipeline's latency run a second time on tansu's memory engine, a broker without
# SQLite's cost per write and per fetch (closer to Kafka's), to tell the broker's share
# from ours.
# Knobs: BENCH_CONCURRENCY, BENCH_SECS, BENCH_STREAMS, KAFKA_LINGER_MS, BENCH_ONLY=ingest|delivery (gateway/benches/gateway.rs);
# BENCH_TURNS, BENCH_COLD_RUNS (handlers/benches/handlers.rs); BENCH_MESSAGES,
# BENCH_LLM_MESSAGES, BENCH_BACKLOG, BENCH_ONLY (handlers/benches/pipeline.rs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"
apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev protobuf-compiler wrk
use_env ci/deps/tansu.sh ensure
TANSU_ENGINE=memory ci/deps/tansu.sh ensure >/dev/null
use_env ci/deps/llama.sh ensure
# A release build of the Qdrant engine server: a debug one would count its own slowness
# as the responder's recall time.
log "building qdrant-dev-server (release; a cold build takes ~15 min)"
cargo build --locked --release -p qdrant-dev-server
export QDRANT_DEV_SERVER_BIN="$CARGO_TARGET_DIR/release/qdrant-dev-server"
# Each idle SSE stream is a socket in this process and one in the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
gateway() {
  cargo bench --locked -p gateway --bench gateway
  if [ "${BENCH_ONLY:-ingest}" = ingest ]; then
    TANSU_ENGINE=memory BENCH_ONLY=ingest cargo bench --locked -p gateway --bench gateway
    # What linger 0 (the lowest reply latency) costs ingest.
    TANSU_ENGINE=memory BENCH_ONLY=ingest BENCH_CONCURRENCY=64 KAFKA_LINGER_MS=0 \
      cargo bench --locked -p gateway --bench gateway
  fi
}
# The pipeline benchmark runs the release gateway found next to the responder.
pipeline() {
  cargo build --locked --release -p gateway --bin gateway
  cargo bench --locked -p handlers --bench pipeline
  if [ "${BENCH_ONLY:-latency}" = latency ]; then
    TANSU_ENGINE=memory BENCH_ONLY=latency cargo bench --locked -p handlers --bench pipeline
  fi
}
# What exporting traces costs (issue 16): ingest and the reply path with export off, at
# sampling 0.1 and at 1.0, on tansu's memory engine (the broker's own cost would
# otherwise hide ours).
# "Off must not move": ingest also runs a gateway built from the last commit before trace
# export existed (BENCH_BASELINE_COMMIT), cached by commit.
baseline_gateway() {
  local commit="${BENCH_BASELINE_COMMIT:-e686656}" dir tree
  dir="$CACHE_DIR/bench-baseline-gateway-$commit"
  if [ ! -x "$dir/gateway" ]; then
    log "building the baseline gateway at $commit (release)"
    tree=$(mktemp -d)
    git -C "$REPO_ROOT" worktree add --detach "$tree" "$commit" >&2
    (cd "$tree" && cargo build --locked --release -p gateway --bin gateway) >&2
    mkdir -p "$dir" && cp "$CARGO_TARGET_DIR/release/gateway" "$dir/gateway"
    git -C "$REPO_ROOT" worktree remove --force "$tree" >&2
  fi
  echo "$dir/gateway"
}
tracing_cost() {
  local baseline
  baseline=$(baseline_gateway)
  TANSU_ENGINE=memory BENCH_ONLY=tracing BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-64}" \
    BENCH_BASELINE_GATEWAY="$baseline" BENCH_BASELINE_LABEL="off, ${BENCH_BASELINE_COMMIT:-e686656}" \
    cargo bench --locked -p gateway --bench gateway
  cargo build --locked --release -p gateway --bin gateway
  TANSU_ENGINE=memory BENCH_ONLY=tracing cargo bench --locked -p handlers --bench pipeline
}
case "${1:-all}" in
  gateway) gateway ;;
  tracing) tracing_cost ;;
  handlers) cargo bench --locked -p handlers --bench handlers ;;
  pipeline) pipeline ;;
  # One after another, not `a && b`: inside an && list bash ignores `set -e`, so a
  # failing benchmark would not stop the function it runs in.
  all)
    gateway
    cargo bench --locked -p handlers --bench handlers
    pipeline
    ;;
  *) die "usage: $0 [gateway|handlers|pipeline|tracing|all]" ;;
esac
