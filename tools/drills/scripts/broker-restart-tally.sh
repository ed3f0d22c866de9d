#!/usr/bin/env bash
# Runs the broker-restart drill RUNS times in a row (default 20) with the broker down
# OUTAGE_SECS (default 8: longer than the responder's 5 s produce timeout, so tokens it
# queued expire), and prints each run's DRILL line and a tally of lost, duplicated and
# mixed replies. docs/RELIABILITY.md has the last tally. Not in CI (CI runs it once).
#   tools/drills/scripts/broker-restart-tally.sh [RUNS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
runs=${1:-${RUNS:-20}}
export DRILL_OUTAGE_SECS=${OUTAGE_SECS:-8}
out=$(mktemp -d)
log "broker-restart x $runs, outage ${DRILL_OUTAGE_SECS}s; DRILL lines in $out/lines"
failed=0
for i in $(seq 1 "$runs"); do
  if ! timeout 10m cargo test -p drills --locked --test drills broker_restart -- --nocapture \
    >"$out/run-$i.log" 2>&1; then
    failed=$((failed + 1))
    log "run $i failed (log: $out/run-$i.log)"
  fi
  grep -h '^DRILL broker-restart' "$out/run-$i.log" | tee -a "$out/lines" || echo "run $i: no DRILL line" | tee -a "$out/lines"
done
# Sums a figure over every DRILL line, and counts the runs where it was above 0.
figure() {
  awk -v name="$1" -F' [|] ' '{ for (i = 2; i <= NF; i++) { split($i, kv, " "); if (kv[1] == name) { sum += kv[2]; if (kv[2] > 0) runs++ } } }
    END { printf "%s %d (in %d runs)\n", name, sum, runs }' "$out/lines"
}
echo
echo "TALLY broker-restart: $runs runs, outage ${DRILL_OUTAGE_SECS}s, $failed failed"
for name in accepted answered lost duplicated mixed retried gaps token_gaps; do figure "$name"; done
[ "$failed" -eq 0 ]
