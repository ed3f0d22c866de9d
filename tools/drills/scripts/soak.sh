#!/usr/bin/env bash
# The soak of docs/RELIABILITY.md: the whole local stack under a steady load for
# MINUTES (default 30), sampled every minute (RSS and open files of every process, lag,
# time to first token, answered/lost), with the same pass checks as the 2-minute CI
# version. Writes soak.md (the table), soak.csv, soak.svg and the load test's report
# into OUT (default target/soak-<date>).
#   tools/drills/scripts/soak.sh [MINUTES] [OUT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export SOAK_MINUTES=${1:-30}
export SOAK_OUT=${2:-$REPO_ROOT/target/soak-$(date +%Y%m%d-%H%M)}
log "soak: ${SOAK_MINUTES} min; results in $SOAK_OUT"
# cargo test, not nextest: nextest's per-test limit (.config/nextest.toml) is for CI.
timeout $((SOAK_MINUTES + 15))m cargo test -p drills --locked --test drills soak -- --nocapture
