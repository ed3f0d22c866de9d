#!/usr/bin/env python3
"""ONNX Runtime (the PyPI wheel's CPU build) on the embedding benchmark's texts.

Usage: bench_embed_ort.py DUMP.json MODEL_DIR

DUMP.json is written by memory-store/benches/embeddings.rs (BENCH_EMBED_DUMP): the text
sets, the batch sizes and the reference (candle f32) vectors. MODEL_DIR holds
tokenizer.json and model.onnx (ci/deps/minilm_to_onnx.py). Prints table rows in the
benchmark's format: ONNX Runtime is the engine the `ort` crate would load with its
`load-dynamic` feature from this wheel's libonnxruntime.so (its default features
download binaries, which this machine cannot).
"""

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    dump = json.load(open(sys.argv[1], encoding="utf-8"))
    model_dir = sys.argv[2]
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding()  # to the batch's longest text
    threads = int(os.environ.get("ORT_THREADS", "2"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> np.ndarray:
        enc = tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        m = mask[:, :, None].astype(np.float32)
        mean = (hidden * m).sum(1) / m.sum(1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    label = f"ONNX Runtime {ort.__version__} f32, {threads} threads (PyPI wheel)"
    for set_name, data in dump["sets"].items():
        texts, reference = data["texts"], np.array(data["reference"], np.float32)
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        for batch in dump["batches"]:
            embed(texts[:batch])  # warm-up, as the Rust benchmark does
            started = time.perf_counter()
            vectors = np.concatenate([embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
            secs = time.perf_counter() - started
            batches = -(-len(texts) // batch)
            min_cos = float((vectors * reference).sum(1).min())
            print(f"| {label} | {set_name} | {batch} | **{len(texts) / secs:.0f}** | "
                  f"{1000 * secs / batches:.1f} | {min_cos:.6f} |", flush=True)


if __name__ == "__main__":
    main()
