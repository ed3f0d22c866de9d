#!/usr/bin/env bash
# Manifest and pipeline validation alone (the GitHub workflow's `manifests` job; the
# README's test command, ci/test.sh, runs the same tests inside its workspace run):
# kubectl kustomize (k8s/, every variant, the deploy overlay) + kubernetes-validate
# --strict, KEDA's, Strimzi's and the Gateway API's objects against their CRDs
# (ci/schemas/) with unknown fields rejected, hadolint, actionlint (+ ShellCheck),
# zizmor --offline, yamllint, and the cross-reference tests between manifests, code and
# pipeline.
# All of them are the Rust tests of deploy-tests/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
started=$SECONDS

rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"

apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev
use_env "$REPO_ROOT/ci/deps/validators.sh" ensure
use_env "$REPO_ROOT/ci/deps/prometheus.sh" ensure   # promtool: the monitoring component's rules

# The cross-reference tests run `<binary> check-config` with the environment each
# manifest gives it, so the three binaries must be built beside the test executables.
log "== building gateway, responder, memory ($((SECONDS - started))s)"
timeout 40m cargo build --locked -p gateway -p handlers --bins
log "== deploy-tests ($((SECONDS - started))s)"
if cargo nextest --version >/dev/null 2>&1; then
  timeout 20m cargo nextest run --locked -p deploy-tests --no-fail-fast
else
  timeout 20m cargo test --locked -p deploy-tests --no-fail-fast
fi
log "== manifests and pipeline valid ($((SECONDS - started))s)"
