#!/usr/bin/env bash
# Runs the chat stack on this machine, no cluster needed (the README's first command).
# Builds or installs what is missing (first run: a while; later: seconds), starts the
# broker, the Qdrant engine server and the LLM servers on loopback, prepares the topics,
# and stops everything on Ctrl-C. Data lives in .stack/ (delete it, or pass --fresh,
# to start over).
#
# Point it at external services instead of local ones with KAFKA_BOOTSTRAP_SERVERS,
# QDRANT_URL and LLM_BASE_URL (+ LLM_MODEL, LLM_API_KEY). Embeddings are computed
# in-process by the handlers; EMBEDDER=openai + EMBEDDINGS_BASE_URL/EMBEDDINGS_MODEL use
# an OpenAI-compatible /v1/embeddings endpoint instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

STACK_DIR="${STACK_DIR:-$REPO_ROOT/.stack}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
QDRANT_PORT="${QDRANT_PORT:-6334}"
QDRANT_REST_PORT="${QDRANT_REST_PORT:-6333}"
LLM_PORT="${LLM_PORT:-8080}"
GATEWAY_PORT="${GATEWAY_PORT:-8000}"
GATEWAY_METRICS_PORT="${GATEWAY_METRICS_PORT:-9091}"
AUTOSCALER_PORT="${AUTOSCALER_PORT:-9100}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
[ "${1:-}" = "--fresh" ] && rm -rf "$STACK_DIR"
mkdir -p "$STACK_DIR/logs"

rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"

pids=()
stop_all() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -eq 0 ] && return
  log "stopping ${#pids[@]} processes"
  # Newest first: the autoscaler drains its handlers while the broker is still up.
  # SIGINT: tansu shuts its SQLite store down cleanly on it (SIGTERM can lose writes).
  local i pid deadline
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[$i]}
    kill -INT "$pid" 2>/dev/null || continue
    deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  log "stopped"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME PORT CMD...: refuses a taken port, runs CMD in the background with its log
# in .stack/logs, and remembers it for Ctrl-C.
start() {
  local name=$1 port=$2; shift 2
  port_free "$port" || die "port $port (for $name) is already in use: stop what holds it or set ${name^^}_PORT"
  "$@" >"$STACK_DIR/logs/$name.log" 2>&1 &
  pids+=($!)
  log "started $name on 127.0.0.1:$port (log: .stack/logs/$name.log)"
}

apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev protobuf-compiler curl unzip

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  use_env ci/deps/tansu.sh ensure
  start kafka "$KAFKA_PORT" ci/deps/tansu.sh run "$KAFKA_PORT" "$STACK_DIR/kafka"
  wait_port "$KAFKA_PORT" 30
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
  # tansu 0.6.0 panics on an idempotent producer's write after an epoch bump (which
  # follows any write that timed out); see docs/DEPENDENCIES.md.
  export KAFKA_IDEMPOTENCE=false
  # tansu holds every fetch for the whole KAFKA_FETCH_WAIT_MAX_MS, data or not, after
  # reading each of its partitions from storage: at the binaries' 10 ms the polling of
  # the relay and the handlers made tansu use more CPU than the LLM in the README's load
  # test (81 s against 53 s); at 100 ms, 19 s, and each Kafka hop waits 0.1-0.2 s
  # (docs/PERFORMANCE.md, "The local LLM"). Kafka answers a held fetch as soon as data
  # comes, so the cluster keeps the binaries' default.
  export KAFKA_FETCH_WAIT_MAX_MS="${KAFKA_FETCH_WAIT_MAX_MS:-100}"
  # tansu's coordinator can give a partition to a joining responder before its owner
  # lets go, so a scale-up ran records twice; hand-over leases make the new owner wait
  # for the owner's release (handlers/src/runtime/consumer/handover.rs).
  export HANDLER_HANDOVER_WAIT_SECS="${HANDLER_HANDOVER_WAIT_SECS:-30}"
fi
if [ -z "${QDRANT_URL:-}" ]; then
  use_env ci/deps/qdrant.sh ensure
  port_free "$QDRANT_REST_PORT" || die "port $QDRANT_REST_PORT (Qdrant REST) is already in use: set QDRANT_REST_PORT"
  start qdrant "$QDRANT_PORT" ci/deps/qdrant.sh run "$QDRANT_PORT" "$STACK_DIR/qdrant" "$QDRANT_REST_PORT"
  wait_port "$QDRANT_PORT" 30
  wait_port "$QDRANT_REST_PORT" 30
  export QDRANT_URL="http://127.0.0.1:$QDRANT_PORT"
  qdrant_rest_url="http://127.0.0.1:$QDRANT_REST_PORT"
fi
# OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY are accepted as the LLM_* settings.
if [ -z "${LLM_BASE_URL:-}" ] && [ -n "${OPENAI_BASE_URL:-}" ]; then
  export LLM_BASE_URL="$OPENAI_BASE_URL" LLM_MODEL="${LLM_MODEL:-${OPENAI_MODEL:-gpt-4o-mini}}"
  if [ -n "${OPENAI_API_KEY:-}" ]; then export LLM_API_KEY="${LLM_API_KEY:-$OPENAI_API_KEY}"; fi
fi
# llama.sh also provides the MiniLM weights the handlers embed with (EMBED_MODEL_DIR).
use_env ci/deps/llama.sh ensure
if [ -z "${LLM_BASE_URL:-}" ]; then
  # SmolLM2 on this machine's CPU: LLAMA_CHAT_SLOTS replies decoded together
  # (ci/deps/llama.sh) on LLAMA_CHAT_THREADS threads; docs/PERFORMANCE.md ("The local
  # LLM") has the measurements behind both defaults.
  export LLAMA_CHAT_SLOTS="${LLAMA_CHAT_SLOTS:-4}" LLAMA_CHAT_THREADS="${LLAMA_CHAT_THREADS:-1}"
  start llm "$LLM_PORT" ci/deps/llama.sh run-chat "$LLM_PORT"
  wait_http "http://127.0.0.1:$LLM_PORT/health" 60
  export LLM_BASE_URL="http://127.0.0.1:$LLM_PORT/v1" LLM_MODEL=smollm2
  # A reply holds its slot while it is generated: the binary's 512 tokens (sized for a
  # GPU server) would keep a slot for many seconds here and every later message waiting
  # behind it. 32 is one or two sentences of SmolLM2 (the README's load test asks for one).
  export LLM_MAX_TOKENS="${LLM_MAX_TOKENS:-32}"
  llm_slots=$LLAMA_CHAT_SLOTS
fi

# Prometheus (PROMETHEUS=0 leaves it out) scrapes the gateway, the handler replicas
# (the autoscaler lists their admin ports) and the autoscaler, which exports the series
# a cluster's KEDA and kube-state-metrics would: the queries and alert rules of
# k8s/components/monitoring work here as in a cluster.
if [ "${PROMETHEUS:-1}" != 0 ]; then
  use_env ci/deps/prometheus.sh ensure
  prom_dir="$STACK_DIR/prometheus"
  mkdir -p "$prom_dir/data"
  # The rule groups of the PrometheusRule (its `spec`, one level up).
  sed -n '/^spec:/,$p' k8s/components/monitoring/rules.yaml | tail -n +2 | sed 's/^  //' >"$prom_dir/rules.yaml"
  [ -s "$prom_dir/targets.json" ] || echo '[]' >"$prom_dir/targets.json"
  scrape="${PROMETHEUS_SCRAPE_SECS:-5}s"
  cat >"$prom_dir/prometheus.yml" <<YAML
# Generated by ci/stack.sh.
global:
  scrape_interval: $scrape
  evaluation_interval: $scrape
rule_files: [rules.yaml]
scrape_configs:
  - job_name: chat-stack/gateway
    static_configs:
      - targets: ["127.0.0.1:$GATEWAY_METRICS_PORT"]
        labels: {namespace: chat-stack}
  - job_name: chat-stack/handlers
    file_sd_configs:
      - files: [targets.json]
        refresh_interval: $scrape
  - job_name: keda
    static_configs:
      - targets: ["127.0.0.1:$AUTOSCALER_PORT"]
YAML
  autoscaler_targets=(--targets-file "$prom_dir/targets.json")
  start prometheus "$PROMETHEUS_PORT" "$PROMETHEUS_BIN" --config.file="$prom_dir/prometheus.yml" \
    --storage.tsdb.path="$prom_dir/data" --storage.tsdb.retention.time=2d \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
else
  autoscaler_targets=()
fi

# The debug profile shares its artefacts with ci/test.sh, so a machine that ran the
# tests starts the stack in seconds. CHATSTACK_PREBUILT=1 (the end-to-end test) uses the
# binaries the workspace build already made instead of building them alone, which
# would compile their dependencies again with another feature set.
if [ "${CHATSTACK_PREBUILT:-}" = 1 ]; then
  for bin in gateway responder memory autoscaler; do
    [ -x "$CARGO_TARGET_DIR/debug/$bin" ] || die "CHATSTACK_PREBUILT=1 but $CARGO_TARGET_DIR/debug/$bin is not built"
  done
else
  log "building the stack's binaries"
  run_logged "$CACHE_DIR/logs/stack-build.log" cargo build --locked -p gateway -p handlers -p autoscaler
fi
log "preparing topics and consumer groups"
LOG_FORMAT=text "$CARGO_TARGET_DIR/debug/gateway" init --timeout-secs 30

# Local development: no tokens (the gateway says so loudly), and a conversation key
# kept with the stack's data so conversation ids stay valid across restarts.
key_file="$STACK_DIR/conversation.key"
[ -s "$key_file" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$key_file"
export AUTH="${AUTH:-disabled}" CONVERSATION_KEY_FILE="${CONVERSATION_KEY_FILE:-$key_file}"
# Without tokens every caller is the same user, so a per-user rate limit would throttle
# a local load test: off unless set.
export RATE_LIMIT_PER_MINUTE="${RATE_LIMIT_PER_MINUTE:-0}"
export LISTEN_ADDR="127.0.0.1:$GATEWAY_PORT" LOG_FORMAT="${LOG_FORMAT:-text}"
port_free "$GATEWAY_METRICS_PORT" || die "port $GATEWAY_METRICS_PORT (gateway metrics) is already in use: set GATEWAY_METRICS_PORT"
# The gateway inherits QDRANT_URL and EMBED_MODEL_DIR (exported above): its history
# and memory routes (/conversations, /memories) read the turns the memory worker stores.
# Only the gateway's: the autoscaler gives each handler replica a free admin port.
METRICS_LISTEN_ADDR="127.0.0.1:$GATEWAY_METRICS_PORT" start gateway "$GATEWAY_PORT" "$CARGO_TARGET_DIR/debug/gateway" serve
# The handlers start from zero on lag, as KEDA would start them in a cluster: the
# autoscaler reads keda/*.yaml and runs responder/memory processes (logs:
# .stack/logs/<handler>-<n>.log). AUTOSCALER_FLAGS can shorten its timings, e.g.
# "--cooldown-secs 30 --scale-down-window-secs 10". Replicas drain within 8 s of
# SIGTERM, so Ctrl-C stops them inside this script's 15 s.
export HANDLER_SHUTDOWN_GRACE_SECS="${HANDLER_SHUTDOWN_GRACE_SECS:-8}"
# Replies in flight are the responder's HANDLER_CONCURRENCY x its replicas. Past the
# LLM's slots they only wait inside the LLM (and each scale step rebalances the group),
# so with the local LLM the autoscaler reads a copy of keda/ in which the responder
# scales to slots / RESPONDER_CONCURRENCY replicas, one per RESPONDER_CONCURRENCY
# messages of lag: the rule keda/responder.yaml states for a cluster. The memory worker
# keeps its own HANDLER_CONCURRENCY (64, twice its embedding batch).
keda_dir=keda responder_bin="$CARGO_TARGET_DIR/debug/responder"
if [ -n "${llm_slots:-}" ]; then
  responder_concurrency="${RESPONDER_CONCURRENCY:-2}"
  responder_max="${RESPONDER_MAX_REPLICAS:-$(((llm_slots + responder_concurrency - 1) / responder_concurrency))}"
  keda_dir="$STACK_DIR/keda"
  rm -rf "$keda_dir" && mkdir -p "$keda_dir" "$STACK_DIR/bin"
  cp keda/*.yaml "$keda_dir/"
  sed -i -e "s/^  maxReplicaCount: .*/  maxReplicaCount: $responder_max/" \
    -e "s/lagThreshold: \"[0-9]*\"/lagThreshold: \"$responder_concurrency\"/" "$keda_dir/responder.yaml"
  responder_bin="$STACK_DIR/bin/responder"
  printf '#!/bin/sh\nHANDLER_CONCURRENCY=%s exec "%s" "$@"\n' "$responder_concurrency" \
    "$CARGO_TARGET_DIR/debug/responder" >"$responder_bin"
  chmod +x "$responder_bin"
  log "responder: $responder_max replicas x HANDLER_CONCURRENCY $responder_concurrency for the LLM's $llm_slots slots"
fi
# shellcheck disable=SC2086 # AUTOSCALER_FLAGS is a list of flags
start autoscaler "$AUTOSCALER_PORT" "$CARGO_TARGET_DIR/debug/autoscaler" --keda-dir "$keda_dir" \
  --handler "responder=$responder_bin" --handler "memory=$CARGO_TARGET_DIR/debug/memory" \
  --listen "127.0.0.1:$AUTOSCALER_PORT" --log-dir "$STACK_DIR/logs" --grace-secs 10 "${autoscaler_targets[@]}" \
  ${AUTOSCALER_FLAGS:-}
wait_http "http://127.0.0.1:$GATEWAY_PORT/ready" 60
wait_http "http://127.0.0.1:$AUTOSCALER_PORT/health" 30

cat <<MSG

  The chat stack is up (data in .stack/, logs in .stack/logs/):
    chat page             http://127.0.0.1:$GATEWAY_PORT/
    gateway API           http://127.0.0.1:$GATEWAY_PORT   (AUTH=$AUTH)
    gateway metrics       http://127.0.0.1:$GATEWAY_METRICS_PORT/metrics
    Kafka (tansu)         $KAFKA_BOOTSTRAP_SERVERS
    Qdrant (gRPC)         $QDRANT_URL
MSG
if [ -n "${qdrant_rest_url:-}" ]; then
  echo "    Qdrant (REST)         $qdrant_rest_url/collections   (a user's stored turns: README, Troubleshooting)"
fi
cat <<MSG
    LLM (chat)            $LLM_BASE_URL   model $LLM_MODEL${llm_slots:+, $llm_slots slots}
    local autoscaler      http://127.0.0.1:$AUTOSCALER_PORT/status   (stands in for KEDA; handlers start on lag)
MSG
if [ "${PROMETHEUS:-1}" != 0 ]; then
  echo "    Prometheus            http://127.0.0.1:$PROMETHEUS_PORT/graph   (alerts: /alerts; dashboard queries: k8s/components/monitoring)"
fi
cat <<MSG

  Send a message, then stream its reply (the last line does both in one request):
    curl -s -X POST http://127.0.0.1:$GATEWAY_PORT/chat -H 'content-type: application/json' -d '{"text":"Hi!"}'
    curl -N "http://127.0.0.1:$GATEWAY_PORT/stream?conversation_id=<conversation_id from the answer>"
    curl -N -X POST "http://127.0.0.1:$GATEWAY_PORT/chat?stream=true" -H 'content-type: application/json' -d '{"text":"Hi!"}'

  Your history and what the bot remembers (and "forget me"):
    curl -s http://127.0.0.1:$GATEWAY_PORT/conversations
    curl -s "http://127.0.0.1:$GATEWAY_PORT/memories?q=Hi"
    curl -s -X DELETE http://127.0.0.1:$GATEWAY_PORT/memories

  The first reply takes a few seconds longer: the responder starts from zero on it.
  Press Ctrl-C to stop everything.
MSG
wait -n "${pids[@]}" || true
die "a service exited unexpectedly; see .stack/logs/"
