#!/usr/bin/env bash
# Benchmarks (not part of ci/test.sh: they take minutes and want a quiet machine).
# Builds the real broker if missing, then runs the gateway benchmark in release mode.
# Knobs: BENCH_CONCURRENCY, BENCH_SECS, BENCH_STREAMS (see gateway/benches/gateway.rs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"
apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev protobuf-compiler
eval "$(ci/deps/tansu.sh ensure)"
# Each idle SSE stream is a socket in this process and one in the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo bench --locked -p gateway --bench gateway
