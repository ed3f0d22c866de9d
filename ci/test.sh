#!/usr/bin/env bash
# The project's test command (README, .ci/run and the GitHub Actions workflow call it).
# Installs what is missing, builds the real dependencies into the cache (tansu,
# llama-server + models, the Qdrant engine server), then runs the format check,
# clippy and every test. Integration tests start their own broker, Qdrant and LLM
# processes on free loopback ports and stop them when done.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
started=$SECONDS

# Keyed by toolchain: a new rustc starts a new cache instead of mixing artefacts.
rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"
log "cache: $CACHE_DIR (cargo target dir: $CARGO_TARGET_DIR)"

# Build tools: cmake/libcurl for librdkafka (rdkafka's cmake-build), protoc for tansu,
# libssl for Kafka over TLS and the HTTPS client.
apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev protobuf-compiler curl unzip

step() { log "== $* ($((SECONDS - started))s)"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "real dependencies"
eval "$(timeout 60m "$REPO_ROOT/ci/deps/tansu.sh" ensure)"
eval "$(timeout 60m "$REPO_ROOT/ci/deps/llama.sh" ensure)"
eval "$(timeout 40m "$REPO_ROOT/ci/deps/qdrant.sh" ensure)"

step "cargo clippy --all-targets -- -D warnings"
timeout 40m cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  # Per-test time limits live in .config/nextest.toml; this bounds the whole run.
  timeout 40m cargo nextest run --workspace --locked --no-fail-fast
  # nextest does not run doctests.
  timeout 10m cargo test --workspace --locked --doc
else
  timeout 40m cargo test --workspace --locked --no-fail-fast
fi
step "all checks passed"
