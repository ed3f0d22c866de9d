#!/usr/bin/env bash
# Benchmarks (not part of ci/test.sh: they take minutes and want a quiet machine).
# Builds the real dependencies if missing, then runs the benchmarks in release mode:
#   ci/bench.sh [gateway|handlers|pipeline|all]
# Knobs: BENCH_CONCURRENCY, BENCH_SECS, BENCH_STREAMS, BENCH_ONLY=delivery (gateway/benches/gateway.rs);
# BENCH_TURNS, BENCH_COLD_RUNS (handlers/benches/handlers.rs); BENCH_MESSAGES,
# BENCH_LLM_MESSAGES, BENCH_BACKLOG, BENCH_ONLY (handlers/benches/pipeline.rs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"
apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev protobuf-compiler
eval "$(ci/deps/tansu.sh ensure)"
eval "$(ci/deps/llama.sh ensure)"
eval "$(ci/deps/qdrant.sh ensure)"
# Each idle SSE stream is a socket in this process and one in the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The pipeline benchmark runs the release gateway found next to the responder.
pipeline() {
  cargo build --locked --release -p gateway --bin gateway
  cargo bench --locked -p handlers --bench pipeline
}
case "${1:-all}" in
  gateway) cargo bench --locked -p gateway --bench gateway ;;
  handlers) cargo bench --locked -p handlers --bench handlers ;;
  pipeline) pipeline ;;
  all) cargo bench --locked -p gateway --bench gateway && cargo bench --locked -p handlers --bench handlers && pipeline ;;
  *) die "usage: $0 [gateway|handlers|pipeline|all]" ;;
esac
