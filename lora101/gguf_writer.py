"""Write a merged Llama-family model as one GGUF file with the ``gguf`` package (llama.cpp's own Python library).

What a GGUF holds: key-value metadata (architecture, shapes, the tokenizer's vocabulary and merges, the chat
template) and named tensors, each in its own type. This writer copies every metadata key of the base's own
GGUF (``general.file_type`` set anew), so the file carries the tokenizer and chat template the model was
trained with, and stores the merged weights under GGUF's tensor names:

* 2-D weights (embedding, attention and MLP projections) in ``gguf_type``: ``"f16"`` (GGML's F16),
  ``"q8_0"`` (blocks of 32 int8 codes with one f16 scale) or ``"q4_0"`` (blocks of 32 4-bit codes, one f16
  scale), quantised by ``gguf.quants.quantize``;
* 1-D weights (the RMSNorm gains) in F32, as llama.cpp's converter writes them;
* the query and key projections with their rows permuted as llama.cpp's ``convert_hf_to_gguf.py`` does for
  Llama (rotary halves interleaved); transformers' GGUF loader undoes exactly that permutation on reading.

Checked in gguf 0.19.0 (``gguf/quants.py`` has quantisers for BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0,
TQ2_0 and MXFP4; K-quants only de-quantise) and transformers 5.23 (``modeling_gguf_pytorch_utils``:
``load_gguf_checkpoint`` de-quantises every tensor with ``gguf.dequantize``, so it reads back every type
gguf can de-quantise, and ``LlamaTensorProcessor`` reverses the q/k permutation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
from tqdm.auto import tqdm

# gguf_type -> (GGMLQuantizationType name, LlamaFileType name)
TYPES = {"f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0")}


def write_gguf(
    merged,
    source_gguf: str | os.PathLike,
    path: str | os.PathLike,
    gguf_type: str = "f16",
    *,
    progress: bool = True,
) -> Path:
    """Write ``merged`` (a Llama-family transformers model) to ``path`` as GGUF, metadata from ``source_gguf``.

    ``source_gguf`` is the base model's own GGUF (the bundled file); its architecture must be ``llama``
    (SmolLM2, Llama, Mistral-style models). Returns ``path``.
    """

    if gguf_type not in TYPES:
        raise ValueError(f"--gguf-type: {gguf_type!r} is not one of {', '.join(TYPES)}")
    reader = gguf.GGUFReader(str(source_gguf))
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    if arch != "llama":
        raise ValueError(
            f"--format gguf: the base's GGUF is of architecture {arch!r}; only 'llama' is written here"
        )
    qtype = gguf.GGMLQuantizationType[TYPES[gguf_type][0]]
    writer = gguf.GGUFWriter(str(path), arch)
    _copy_metadata(reader, writer, gguf.LlamaFileType[TYPES[gguf_type][1]])
    tensors = list(named_tensors(merged))
    for name, weight in tqdm(tensors, desc=f"GGUF {gguf_type}", disable=not progress):
        data, keywords = _encode(weight, qtype)
        writer.add_tensor(name, data, **keywords)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return Path(path)


def named_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of a Llama-family ``model``, q and k permuted as llama.cpp does.

    Names follow gguf's own map (``gguf.get_tensor_name_map``): ``model.layers.3.self_attn.q_proj.weight``
    is ``blk.3.attn_q.weight``. A tied ``lm_head`` is the embedding and is not written twice.
    """

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, _, suffix = hf_name.rpartition(".")
        name = names.get_name(stem)
        if name is None:
            raise ValueError(f"{hf_name} has no GGUF name in gguf's Llama map")
        weight = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith("attn_q"):
            weight = permute_rotary(weight, heads)
        elif name.endswith("attn_k"):
            weight = permute_rotary(weight, kv_heads)
        yield f"{name}.{suffix}", weight


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, the two rotary halves interleaved, (out, in) -> (out, in)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _encode(weight: np.ndarray, qtype) -> tuple[np.ndarray, dict]:
    """The array to store and add_tensor's keywords: 1-D tensors in F32, the rest in ``qtype``."""

    if weight.ndim == 1:
        return weight.astype(np.float32), {}
    if qtype == gguf.GGMLQuantizationType.F16:
        return weight.astype(np.float16), {}
    return gguf.quants.quantize(weight, qtype), {"raw_dtype": qtype}


def _copy_metadata(reader, writer, file_type) -> None:
    """Every key of the source GGUF but those the writer sets itself; ``general.file_type`` set to ``file_type``."""

    skip = {gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE}
    for field in reader.fields.values():
        if field.name in skip or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_file_type(int(file_type))
