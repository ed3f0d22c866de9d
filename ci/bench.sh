#!/usr/bin/env bash
# Benchmarks (not part of ci/test.sh: they take minutes and want a quiet machine).
# Builds the real dependencies if missing, then runs the benchmarks in release mode:
#   ci/bench.sh [gateway|cost|handlers|pipeline|tracing|embeddings|llm-slots|llm-layout|llm-quant|loadtest|rebalance|all]
# Everything runs on tansu's SQLite engine (the stack's broker); gateway ingest and the
# pipeline's latency run a second time on tansu's memory engine, a broker without
# SQLite's cost per write and per fetch (closer to Kafka's), to tell the broker's share
# from ours.
# Knobs: BENCH_CONCURRENCY, BENCH_SECS, BENCH_STREAMS, KAFKA_LINGER_MS, BENCH_ONLY=ingest|delivery|cost,
# BENCH_ROUNDS, BENCH_GATEWAYS (gateway/benches/gateway.rs);
# BENCH_TURNS, BENCH_COLD_RUNS (handlers/benches/handlers.rs); BENCH_MESSAGES,
# BENCH_LLM_MESSAGES, BENCH_BACKLOG, BENCH_ONLY (handlers/benches/pipeline.rs);
# BENCH_EMBED_TEXTS, BENCH_EMBED_BATCHES, BENCH_EMBED_ONLY (memory-store/benches/embeddings.rs);
# BENCH_ASSIGNMENT, BENCH_REVOKE_GRACE_SECS, BENCH_PHASE_SECS, BENCH_TOKENS, BENCH_TOKEN_MS,
# BENCH_PROFILE (handlers/benches/rebalance.rs).
# `ci/bench.sh embeddings` compares the embedding engines (issue 18, part 4).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
rustc_version=$(rustc --version | cut -d' ' -f2)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target/rustc-$rustc_version}"
apt_install build-essential cmake pkg-config libssl-dev libcurl4-openssl-dev protobuf-compiler wrk
use_env ci/deps/tansu.sh ensure
TANSU_ENGINE=memory ci/deps/tansu.sh ensure >/dev/null
use_env ci/deps/llama.sh ensure
# A release build of the Qdrant engine server: a debug one would count its own slowness
# as the responder's recall time. (The local-LLM parts run ci/stack.sh's own processes.)
case "${1:-all}" in
  llm-slots | llm-layout | llm-quant | loadtest | cost) ;;
  *)
    log "building qdrant-dev-server (release; a cold build takes ~15 min)"
    cargo build --locked --release -p qdrant-dev-server
    export QDRANT_DEV_SERVER_BIN="$CARGO_TARGET_DIR/release/qdrant-dev-server"
    ;;
esac
# Each idle SSE stream is a socket in this process and one in the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
gateway() {
  cargo bench --locked -p gateway --bench gateway
  if [ "${BENCH_ONLY:-ingest}" = ingest ]; then
    TANSU_ENGINE=memory BENCH_ONLY=ingest cargo bench --locked -p gateway --bench gateway
    # What linger 0 (the lowest reply latency) costs ingest.
    TANSU_ENGINE=memory BENCH_ONLY=ingest BENCH_CONCURRENCY=64 KAFKA_LINGER_MS=0 \
      cargo bench --locked -p gateway --bench gateway
  fi
}
# The pipeline benchmark runs the release gateway found next to the responder.
pipeline() {
  cargo build --locked --release -p gateway --bin gateway
  cargo bench --locked -p handlers --bench pipeline
  if [ "${BENCH_ONLY:-latency}" = latency ]; then
    TANSU_ENGINE=memory BENCH_ONLY=latency cargo bench --locked -p handlers --bench pipeline
  fi
}
# Embedding engines (issue 18, part 4): candle and rten in-process (on 2 threads, then
# 1), llama-server configurations and ONNX Runtime (PyPI wheel, for comparison), on the
# same texts and batch sizes, against candle's f32 vectors; then the memory worker end
# to end (batched), candle against rten.
embeddings() {
  local dump venv="$CACHE_DIR/venv-bench-ort-1.31.1-tokenizers-0.23.3-numpy-2.2.6"
  dump=$(mktemp)
  BENCH_EMBED_DUMP="$dump" cargo bench --locked -p memory-store --bench embeddings
  RAYON_NUM_THREADS=1 RTEN_NUM_THREADS=1 BENCH_EMBED_ONLY=f32, BENCH_EMBED_LABEL=", 1 thread" \
    cargo bench --locked -p memory-store --bench embeddings
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv.tmp.$$"
    run_logged "$CACHE_DIR/logs/venv-bench-ort.log" "$venv.tmp.$$/bin/python" -m pip install \
      --disable-pip-version-check --only-binary :all: onnxruntime==1.31.1 tokenizers==0.23.3 numpy==2.2.6
    mv -T "$venv.tmp.$$" "$venv"
  fi
  "$venv/bin/python" ci/bench_embed_ort.py "$dump" "$EMBED_MODEL_DIR"
  ORT_THREADS=1 "$venv/bin/python" ci/bench_embed_ort.py "$dump" "$EMBED_MODEL_DIR"
  rm -f "$dump"
  BENCH_ONLY=memory-batched cargo bench --locked -p handlers --bench handlers
}
# What exporting traces costs (issue 16): ingest and the reply path with export off, at
# sampling 0.1 and at 1.0, on tansu's memory engine (the broker's own cost would
# otherwise hide ours).
# "Off must not move": ingest also runs a gateway built from the last commit before trace
# export existed (BENCH_BASELINE_COMMIT), cached by commit.
baseline_gateway() {
  local commit="${BENCH_BASELINE_COMMIT:-e686656}" dir tree
  dir="$CACHE_DIR/bench-baseline-gateway-$commit"
  if [ ! -x "$dir/gateway" ]; then
    log "building the baseline gateway at $commit (release)"
    tree=$(mktemp -d)
    git -C "$REPO_ROOT" worktree add --detach "$tree" "$commit" >&2
    (cd "$tree" && cargo build --locked --release -p gateway --bin gateway) >&2
    mkdir -p "$dir" && cp "$CARGO_TARGET_DIR/release/gateway" "$dir/gateway"
    git -C "$REPO_ROOT" worktree remove --force "$tree" >&2
  fi
  echo "$dir/gateway"
}
tracing_cost() {
  local baseline
  baseline=$(baseline_gateway)
  TANSU_ENGINE=memory BENCH_ONLY=tracing BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-64}" \
    BENCH_BASELINE_GATEWAY="$baseline" BENCH_BASELINE_LABEL="off, ${BENCH_BASELINE_COMMIT:-e686656}" \
    cargo bench --locked -p gateway --bench gateway
  cargo build --locked --release -p gateway --bin gateway
  TANSU_ENGINE=memory BENCH_ONLY=tracing cargo bench --locked -p handlers --bench pipeline
}
# The gateway's cost per accepted message against its two floors (issue 18, part 1): a
# trivial 202 route in the gateway's serve loop and a bare producer, then this build and
# the build before the issue's levers (BENCH_BASELINE_COMMIT), in turn, driven by wrk at
# 64 and 256 connections, on tansu's memory engine and then on SQLite. BENCH_GATEWAYS
# adds builds or settings to compare (label=path [NAME=VALUE…],…).
cost() {
  local baseline
  baseline=$(BENCH_BASELINE_COMMIT="${BENCH_BASELINE_COMMIT:-3a50b2c}" baseline_gateway)
  local gateways="before (${BENCH_BASELINE_COMMIT:-3a50b2c})=$baseline${BENCH_GATEWAYS:+,$BENCH_GATEWAYS}"
  TANSU_ENGINE=memory BENCH_ONLY=cost BENCH_GATEWAYS="$gateways" cargo bench --locked -p gateway --bench gateway
  BENCH_ONLY=cost BENCH_GATEWAYS="$gateways" cargo bench --locked -p gateway --bench gateway
}
# Issue 18, part 3: the local LLM behind the README's load test.
# llm_slots: llama-server's throughput and time to first token by slots (-np) and threads
# (-t) for the responder's prompt (ci/llm_slots.py), each setting alone on the machine.
# Knobs: BENCH_LLM_SLOTS ("1 2 4 8"), BENCH_LLM_THREADS ("1 2"), BENCH_LLM_REQUESTS (24),
# BENCH_LLM_MAX_TOKENS (the stack's default, 32).
llm_slots() {
  local port=${BENCH_LLM_PORT:-8089} slots threads pid log
  log=$(mktemp)
  for threads in ${BENCH_LLM_THREADS:-1 2}; do
    for slots in ${BENCH_LLM_SLOTS:-1 2 4 8}; do
      LLAMA_CHAT_THREADS=$threads LLAMA_CHAT_SLOTS=$slots ci/deps/llama.sh run-chat "$port" >"$log" 2>&1 &
      pid=$!
      wait_http "http://127.0.0.1:$port/health" 60
      grep -m1 -o 'n_ctx_slot = [0-9]*' "$log" >&2 || true
      timeout 600 python3 ci/llm_slots.py --url "http://127.0.0.1:$port" --concurrency "$slots" \
        --requests "${BENCH_LLM_REQUESTS:-24}" --max-tokens "${BENCH_LLM_MAX_TOKENS:-32}" \
        --label "llm-slots: -np $slots -t $threads" || true
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
  done
  rm -f "$log"
}
# llm_layout: prompt tokens llama-server reads over multi-turn conversations with the
# recalled memories in the system prompt (old) or in front of the new message (new).
llm_layout() {
  local port=${BENCH_LLM_PORT:-8089} pid layout
  ci/deps/llama.sh run-chat "$port" >/dev/null 2>&1 &
  pid=$!
  wait_http "http://127.0.0.1:$port/health" 60
  for layout in old new; do
    timeout 600 python3 ci/llm_prompt_layout.py --url "http://127.0.0.1:$port" --layout "$layout" || true
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# llm_quant: the chat model as the wheel ships it (Q4_1) against the Q8_0 copy the stack
# runs (ci/deps/gguf_to_q8_0.py): the same 48 requests of llm_layout, one at a time.
llm_quant() {
  local port=${BENCH_LLM_PORT:-8089} pid model
  for model in "$CHAT_MODEL_GGUF_Q4_1" "$CHAT_MODEL_GGUF"; do
    echo "model $(basename "$model"), llama-server -np ${LLAMA_CHAT_SLOTS:-4} -t ${LLAMA_CHAT_THREADS:-1}"
    CHAT_MODEL_GGUF_OVERRIDE="$model" ci/deps/llama.sh run-chat "$port" >/dev/null 2>&1 &
    pid=$!
    wait_http "http://127.0.0.1:$port/health" 60
    timeout 600 python3 ci/llm_prompt_layout.py --url "http://127.0.0.1:$port" --layout old || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
# loadtest: the README's load test (ci/stack.sh with its defaults, then `loadtest` at its
# load); writes report.json and the plots into BENCH_LOADTEST_OUT (.stack/bench/loadtest),
# from which docs/loadtest/ is copied. The stack runs from a fresh data directory, so no
# memories of an earlier run lengthen the prompts. Every wait is bounded.
# `ci/bench.sh loadtest` runs llm_slots first (BENCH_ONLY=loadtest: the load test alone).
# llm_figures LABEL SED-PATTERN LOG: count, min, p50, p90 and max of the numbers the
# pattern captures in the log's lines.
llm_figures() {
  sed -n "s#.*$2#\1#p" "$3" | sort -n | awk -v label="$1" '{a[NR] = $1}
    END {if (NR) printf "llm %s: n %d, min %d, p50 %d, p90 %d, max %d\n", label, NR, a[1], a[int((NR + 1) / 2)], a[int(NR * 0.9 + 0.5)], a[NR]}'
}
stack='' top=''
loadtest() {
  local dir="$REPO_ROOT/.stack/bench" out="${BENCH_LOADTEST_OUT:-$REPO_ROOT/.stack/bench/loadtest}"
  local rc=0 deadline
  # CHATSTACK_PREBUILT=1: run the binaries already in $CARGO_TARGET_DIR/debug as they are.
  [ "${CHATSTACK_PREBUILT:-}" = 1 ] || cargo build --locked --workspace --bins
  rm -rf "$dir" && mkdir -p "$dir"
  STACK_DIR="$dir" CHATSTACK_PREBUILT=1 \
    AUTOSCALER_FLAGS="${AUTOSCALER_FLAGS:---cooldown-secs 30 --scale-down-window-secs 15}" \
    ci/stack.sh >"$dir/stack.out" 2>&1 &
  stack=$!
  # However this ends (a failure, a timeout's SIGTERM), the stack goes down with it.
  trap 'stop_stack' EXIT
  trap 'exit 143' TERM
  # The stack prints its banner once the gateway and the autoscaler answer.
  deadline=$((SECONDS + 300))
  until grep -q 'The chat stack is up' "$dir/stack.out" 2>/dev/null; do
    kill -0 "$stack" 2>/dev/null || { cat "$dir/stack.out" >&2; die "ci/stack.sh exited"; }
    [ $SECONDS -lt $deadline ] || { kill -TERM "$stack"; die "ci/stack.sh not up after 300 s"; }
    sleep 1
  done
  grep -E 'n_ctx_slot|n_threads' "$dir/logs/llm.log" | head -3 || true
  grep -E 'llm|responder:' "$dir/stack.out" | grep -v started || true
  top -b -d 5 >"$dir/top.txt" &
  top=$!
  timeout 900 "$CARGO_TARGET_DIR/debug/loadtest" --url http://127.0.0.1:8000 \
    --conversations "${BENCH_CONVERSATIONS:-12}" --rate "${BENCH_RATE:-1.5}" --duration "${BENCH_DURATION:-30}" \
    --kafka 127.0.0.1:9092 --autoscaler-url http://127.0.0.1:9100 --drain-secs 300 --tail-secs 150 \
    --out "$out" || rc=$?
  kill "$top" 2>/dev/null || true
  # What the LLM did, from llama-server's log: per request, the prompt tokens it evaluated
  # (past the slot's cached prefix), its decode speed, and the context used at the end.
  llm_figures "prompt tokens evaluated" 'prompt eval time = .* / *\([0-9]*\) tokens.*' "$dir/logs/llm.log"
  llm_figures "prompt eval tokens/s" 'prompt eval time = .* ( *[0-9.]* ms per token, *\([0-9]*\)\..*' "$dir/logs/llm.log"
  llm_figures "decode ms/token (per slot)" '| *eval time = .* ( *\([0-9]*\)\.[0-9]* ms per token.*' "$dir/logs/llm.log"
  llm_figures "context tokens used" 'stop processing: n_tokens = \([0-9]*\).*' "$dir/logs/llm.log"
  # CPU seconds per process of the stack over the run (top's samples every 5 s).
  awk '$1 ~ /^[0-9]+$/ && NF >= 12 {cpu[$12] += $9 * 5 / 100} END {for (c in cpu) printf "cpu %-16s %6.1f s\n", c, cpu[c]}' \
    "$dir/top.txt" | sort -k3 -rn | head -8
  stop_stack
  trap - EXIT TERM
  [ "$rc" = 0 ] || die "loadtest exited with $rc"
}
# stop_stack: SIGTERM to ci/stack.sh, which gives each of its processes up to 15 s.
stop_stack() {
  local deadline=$((SECONDS + 120))
  kill "$top" 2>/dev/null || true
  kill -TERM "$stack" 2>/dev/null || return 0
  while kill -0 "$stack" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 1; done
  if kill -0 "$stack" 2>/dev/null; then log "ci/stack.sh still running after 120 s (pid $stack)"; fi
}
# Scaling the responders 1 -> 2 -> 4 under a backlog (issue 18, part 2): stalls, re-runs
# and answered/s with eager and with cooperative assignment, on both brokers.
# BENCH_PROFILE=dev runs the dev-profile build (cargo test) instead of the release one.
rebalance() {
  local run=(cargo bench --locked -p handlers --bench rebalance)
  if [ "${BENCH_PROFILE:-release}" = dev ]; then
    run=(cargo test --locked -p handlers --bench rebalance)
  fi
  "${run[@]}"
  TANSU_ENGINE=memory "${run[@]}"
}
case "${1:-all}" in
  gateway) gateway ;;
  cost) cost ;;
  tracing) tracing_cost ;;
  embeddings) embeddings ;;
  handlers) cargo bench --locked -p handlers --bench handlers ;;
  pipeline) pipeline ;;
  rebalance) rebalance ;;
  llm-slots) llm_slots ;;
  llm-layout) llm_layout ;;
  llm-quant) llm_quant ;;
  loadtest)
    [ "${BENCH_ONLY:-}" = loadtest ] || llm_slots
    loadtest
    ;;
  # One after another, not `a && b`: inside an && list bash ignores `set -e`, so a
  # failing benchmark would not stop the function it runs in.
  all)
    gateway
    cargo bench --locked -p handlers --bench handlers
    pipeline
    ;;
  *) die "usage: $0 [gateway|cost|handlers|pipeline|tracing|embeddings|llm-slots|llm-layout|llm-quant|loadtest|rebalance|all]" ;;
esac
