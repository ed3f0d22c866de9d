#!/usr/bin/env bash
# Prometheus's own tools, from Debian's `prometheus` package (bookworm: 2.42): promtool,
# which deploy-tests runs on k8s/components/monitoring/rules.yaml (`promtool check
# rules`, and `promtool test rules` with ci/monitoring/rules.test.yaml), and the server
# binary, for anyone who wants to try the rules and dashboard against a local stack.
# Only the binaries are wanted: the package's service is never started (a Prometheus
# on :9090 would also take a port the tests use).
#
#   ci/deps/prometheus.sh ensure   install the package when missing (apt, bounded), then
#                                  print `export PROMTOOL=...` and `export PROMETHEUS_BIN=...`
#                                  for eval:
#                                    use_env ci/deps/prometheus.sh ensure   (ci/lib.sh)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

PACKAGE=prometheus
PROMTOOL=/usr/bin/promtool
PROMETHEUS_BIN=/usr/bin/prometheus
# How long apt may wait for another install's lock, and how long the install may take.
LOCK_WAIT_SECS=600
INSTALL_TIMEOUT=15m

ready() {
  [ -x "$PROMTOOL" ] && [ -x "$PROMETHEUS_BIN" ] && "$PROMTOOL" --version >/dev/null 2>&1
}

install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d whether a package's
  # postinst may start its service; 101 means "no". Container images usually ship
  # such a file already; if this machine has none, one is put there for the install
  # and removed after it.
  local policy=/usr/sbin/policy-rc.d placed=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# ci/deps/prometheus.sh: no service starts during this install\nexit 101\n' \
      | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    placed=1
    # shellcheck disable=SC2064 # expand now: the values are fixed
    trap "$sudo rm -f '$policy'" EXIT
  fi
  log "installing Debian's $PACKAGE (promtool, prometheus; the service is not started)"
  local status=0
  {
    timeout "$INSTALL_TIMEOUT" $sudo apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT_SECS" update -qq \
      && DEBIAN_FRONTEND=noninteractive timeout "$INSTALL_TIMEOUT" $sudo apt-get \
        -o DPkg::Lock::Timeout="$LOCK_WAIT_SECS" install -y -qq --no-install-recommends "$PACKAGE"
  } >"$CACHE_DIR/logs/prometheus-install.log" 2>&1 || status=$?
  if [ -n "$placed" ]; then
    $sudo rm -f "$policy"
    trap - EXIT
  fi
  if [ "$status" -ne 0 ]; then
    tail -n 30 "$CACHE_DIR/logs/prometheus-install.log" >&2
    die "installing $PACKAGE failed (exit $status; log: $CACHE_DIR/logs/prometheus-install.log)"
  fi
  ready || die "$PACKAGE is installed but $PROMTOOL or $PROMETHEUS_BIN does not run"
}

cmd_ensure() {
  ready || install
  echo "export PROMTOOL=$PROMTOOL"
  echo "export PROMETHEUS_BIN=$PROMETHEUS_BIN"
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  *) die "usage: $0 ensure" ;;
esac
