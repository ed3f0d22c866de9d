#!/usr/bin/env bash
# The environment the drills need, as ci/test.sh makes it: the real broker, LLM server
# and Qdrant engine from the cache (built if missing), and the workspace's binaries.
# Sourced by the scripts beside it, never executed.
source "$(dirname "${BASH_SOURCE[0]}")/../../../ci/lib.sh"
cd "$REPO_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$(rustc --version | cut -d' ' -f2)}"
use_env "$REPO_ROOT/ci/deps/tansu.sh" ensure
use_env "$REPO_ROOT/ci/deps/llama.sh" ensure
log "building the workspace"
cargo build --workspace --locked --quiet
export CHATSTACK_PREBUILT=1
use_env "$REPO_ROOT/ci/deps/qdrant.sh" ensure
cargo test -p drills --locked --no-run --quiet
