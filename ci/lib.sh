#!/usr/bin/env bash
# Shared helpers for the ci/ scripts: cache location, logging, bounded waits.
# Sourced, never executed.

# Heavy builds (tansu, llama-server, cargo's target dir) live outside the checkout,
# keyed by version, so a clean clone on a warm machine reuses them.
CACHE_DIR="${CHATSTACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatstack}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$CACHE_DIR/logs"

log() { printf '\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\033[31m[%s] error: %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# run_logged LOGFILE CMD...: runs a long build, showing its last line every 15 s so
# a cold build is visibly alive without flooding the terminal.
run_logged() {
  local logfile=$1; shift
  "$@" >"$logfile" 2>&1 &
  local pid=$! started=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null || break
    log "  … $((SECONDS - started))s: $(tail -n 1 "$logfile" | cut -c1-110)"
  done
  if ! wait "$pid"; then
    tail -n 40 "$logfile" >&2
    die "command failed: $* (full log: $logfile)"
  fi
}

# use_env CMD...: runs an `ensure` that prints `export` lines, then applies them; dies
# when it fails (`eval "$(CMD)"` would hide the failure from `set -e`).
use_env() {
  local exports
  exports=$("$@") || die "failed: $*"
  eval "$exports"
}

# apt_install PKG...: installs Debian packages that are missing (CI runs as root).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# wait_http URL TIMEOUT_SECS: bounded wait for a 2xx answer.
wait_http() {
  local url=$1 timeout=$2 deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$url not healthy after ${timeout}s"
    sleep 0.2
  done
}

# wait_port PORT TIMEOUT_SECS: bounded wait for a TCP listener on 127.0.0.1.
wait_port() {
  local port=$1 timeout=$2 deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "nothing listening on 127.0.0.1:$port after ${timeout}s"
    sleep 0.2
  done
}

# port_free PORT: true when nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
