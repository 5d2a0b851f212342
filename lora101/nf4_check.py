"""lora101's 4-bit de-quantiser beside bitsandbytes' on the same packed codes: a library bug, caught.

bitsandbytes 0.50's CPU ``dequantize_4bit`` goes wrong when a tensor's last dimension is a multiple of 16 but
not of the blocksize (``torch.randn(8, 48)`` with blocks of 64, say). Its C++ kernel
(``dequantizeBlockwise4bitCpu`` in ``csrc/cpu_ops.cpp``) has a fast AVX-512 branch, taken when the last
dimension ``n`` is a multiple of 16, that looks up the scale of row ``i``, column ``j`` at
``absmax[i * (n // blocksize) + j // blocksize]``: right only when every row holds whole blocks. Blocks run
over the flattened tensor, so with ``n = 48`` and blocks of 64 row 1 starts inside block 0, and every row
reads its scales from the wrong place (``n // blocksize`` is 0: every row uses the first ones). The ARM branch
of the same function checks ``n % blocksize == 0``; the AVX-512 one does not, and the Python wrapper sends
blocksizes of 2048 and up elsewhere. CPUs without AVX-512 take a scalar loop that indexes by the flat
position, and get it right. ``bitsandbytes.nn.Linear4bit`` de-quantises through the same kernel.

:func:`bitsandbytes_dequantize_check` measures both de-quantisers on one weight; lesson 4 calls it.
"""

from __future__ import annotations

import math

import torch

from lora101 import nf4

__all__ = ["bitsandbytes_dequantize_check", "bug_applies"]


def bug_applies(shape: tuple[int, ...], blocksize: int) -> bool:
    """Whether bitsandbytes' CPU de-quantiser takes the wrong branch for a tensor of ``shape`` here: an AVX-512
    CPU, more than one row, a last dimension that is a multiple of 16 but not of ``blocksize``, and
    ``blocksize`` below 2048. (The first row is always right; a 1-D tensor is one row.)"""
    if len(shape) < 2 or math.prod(shape[:-1]) < 2:
        return False
    n = shape[-1]
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return avx512 and n % 16 == 0 and n % blocksize != 0 and 16 <= blocksize < 2048


def _reference_decode(packed: torch.Tensor, absmax: torch.Tensor, code_type: str, blocksize: int, shape):
    """bitsandbytes' codes decoded the plain way: ``code[q] * absmax[block]``, blocks over the flat tensor
    (what bitsandbytes' own pure-PyTorch decoder, ``_dequantize_4bit_compute``, computes), in float32."""
    state = nf4.QuantState(packed.reshape(-1), absmax, torch.Size(shape), torch.float32, blocksize, code_type)
    return nf4.dequantize_4bit_plain(state, torch.float32, nf4.codebook(code_type))


def bitsandbytes_dequantize_check(
    w: torch.Tensor | None = None, blocksize: int = 64, code_type: str = "nf4"
) -> dict[str, object]:
    """Quantise ``w`` with bitsandbytes and with lora101 (the same codes, checked), de-quantise with both, and
    measure each result against ``w``.

    ``w``: a float32/bfloat16/float16 tensor of 2 or more dimensions, on the CPU; default
    ``torch.randn(8, 48)`` (seed 0). Returns a dict: ``lora101_max_error`` and ``bitsandbytes_max_error``
    (largest ``|w_hat - w|``), ``lora101_rmse``, ``bitsandbytes_rmse``, ``same_codes`` (the packed codes and
    block scales of both are equal), ``lora101_equals_reference`` and ``bitsandbytes_equals_reference``
    (de-quantised values equal the plain decoding ``code[q] * absmax[block]`` of those codes),
    ``bug_expected`` (:func:`bug_applies`), ``cpu_capability``, ``bitsandbytes_version``, ``shape``,
    ``blocksize``.
    """
    import bitsandbytes
    import bitsandbytes.functional as BF

    if w is None:
        w = torch.randn(8, 48, generator=torch.Generator().manual_seed(0))
    if not isinstance(w, torch.Tensor) or w.dim() < 2 or w.device.type != "cpu":
        raise ValueError(f"w must be a CPU tensor of 2 or more dimensions, got {getattr(w, 'shape', w)!r}")
    ours = nf4.quantize_4bit(w, code_type, blocksize)
    packed, state = BF.quantize_4bit(w, blocksize=blocksize, quant_type=code_type)
    theirs = BF.dequantize_4bit(packed, state).reshape(w.shape)  # in w's dtype, as lora101's below
    mine = nf4.dequantize_4bit(ours)
    reference = _reference_decode(packed, state.absmax, code_type, blocksize, w.shape).to(w.dtype)
    err_ours, err_theirs = (mine.float() - w.float()).abs(), (theirs.float() - w.float()).abs()
    return {
        "shape": tuple(w.shape),
        "blocksize": blocksize,
        "lora101_max_error": float(err_ours.max()),
        "bitsandbytes_max_error": float(err_theirs.max()),
        "lora101_rmse": float(err_ours.square().mean().sqrt()),
        "bitsandbytes_rmse": float(err_theirs.square().mean().sqrt()),
        "same_codes": torch.equal(ours.packed, packed.reshape(-1)) and torch.equal(ours.absmax, state.absmax),
        "lora101_equals_reference": torch.equal(mine, reference),
        "bitsandbytes_equals_reference": torch.equal(theirs, reference),
        "bug_expected": bug_applies(tuple(w.shape), blocksize),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bitsandbytes_version": bitsandbytes.__version__,
    }
