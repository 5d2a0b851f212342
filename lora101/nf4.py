"""NF4 from first principles: 4-bit blockwise quantisation that matches bitsandbytes bit for bit.

The recipe (QLoRA, Dettmers et al. 2023), for a weight tensor ``w`` of any shape with ``n`` elements:

1. Flatten ``w`` and cut it into blocks of ``blocksize`` elements (the last block may be partial).
2. Per block, ``absmax = max |w|``; scale the block into ``[-1, 1]`` by ``w / absmax``.
3. Replace each scaled value by the index of the nearest of 16 code values (a *codebook*): NF4's come from
   quantiles of the standard normal, FP4's from a tiny float format, int4's are evenly spaced.
4. Pack two 4-bit indices into one byte, the first element in the high nibble.
5. Optionally (*double quantisation*) store the float32 ``absmax`` values themselves in 8 bits: subtract
   their mean, then quantise them blockwise (blocks of 256) with bitsandbytes' dynamic 8-bit code.

Dequantisation is a table look-up times the block's absmax. Every rounding choice here follows
bitsandbytes' CPU path (``bitsandbytes/backends/default/ops.py`` for 4-bit quantisation, its C++ CPU kernels
for dequantisation and for the 8-bit step), so ``tests/unit/test_nf4.py`` can demand ``torch.equal``. The code is
device-agnostic torch; it is tested on the CPU only (this course's CI has no GPU).

Public API:

* codebooks: :func:`nf4_codebook`, :func:`fp4_codebook`, :func:`int4_codebook`, :func:`dynamic_codebook`;
* :class:`QuantState`, :func:`quantize_4bit`, :func:`dequantize_4bit` (and :func:`dequantize_4bit_plain`, the
  same bits in a form ``torch.compile`` traces) and the named variants :func:`quantize_nf4`,
  :func:`quantize_fp4`, :func:`quantize_int4`, :func:`dequantize_nf4`;
* :func:`pack_4bit`, :func:`unpack_4bit`, :func:`quantize_blockwise_8bit`, :func:`dequantize_blockwise_8bit`;
* accounting: :func:`bits_per_parameter`, :func:`weights_memory_bytes`, :func:`reconstruction_error`,
  :func:`code_entropy`;
* :class:`NF4Linear`: a frozen 4-bit linear layer; wrap it in ``lora101.lora.LoRALinear`` for QLoRA.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NF4_OFFSET",
    "BLOCKSIZES",
    "CODE_TYPES",
    "nf4_codebook",
    "fp4_codebook",
    "int4_codebook",
    "codebook",
    "dynamic_codebook",
    "QuantState",
    "quantize_4bit",
    "dequantize_4bit",
    "quantize_nf4",
    "quantize_fp4",
    "quantize_int4",
    "dequantize_nf4",
    "dequantize_4bit_plain",
    "pack_4bit",
    "unpack_4bit",
    "quantize_blockwise_8bit",
    "dequantize_blockwise_8bit",
    "bits_per_parameter",
    "weights_memory_bytes",
    "reconstruction_error",
    "code_counts",
    "code_entropy",
    "NF4Linear",
]

NF4_OFFSET = 0.9677083
"""The outermost quantile NF4 uses (bitsandbytes' ``create_normal_map`` default): ppf(0.9677083) ~ 1.848 sigma."""

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Blocksizes bitsandbytes 0.50's ``quantize_4bit`` accepts (``functional.py``), on every device."""

CODE_TYPES = ("nf4", "fp4", "int4")
DOUBLE_QUANT_BLOCKSIZE = 256  # bitsandbytes' quantize_4bit uses blocks of 256 for the absmax constants
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# Codebooks


def nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values, sorted, float32, shape (16,): normal quantiles scaled into [-1, 1].

    8 positive values are the normal quantiles at 8 probabilities evenly spaced from ``offset`` down to
    (but not including) 0.5, 7 negative ones likewise, plus an exact 0: 9 + 7 would double-count zero, so
    the halves are asymmetric (8 positive, 7 negative). Dividing by the largest makes the ends +-1.
    The probabilities are float32 (``torch.linspace``) and the quantiles float64, as in bitsandbytes'
    ``create_normal_map``, which is why the result equals its stored table to the last bit.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).float().sort().values
    return values / values.max()


def fp4_codebook() -> torch.Tensor:
    """bitsandbytes' FP4 values in bit-pattern order (index = the 4-bit code), float32, shape (16,).

    Bit 3 is the sign; bits 2-1 an exponent e, bit 0 a mantissa m. e = 0 is subnormal (0 or 0.0625), else
    the value is 2**(4 - e) * (1 + m / 2) (bitsandbytes' exponent convention), all divided by the largest, 12.
    """
    magnitudes = []
    for bits in range(8):
        e, m = bits >> 1, bits & 1
        magnitudes.append(0.0625 * m if e == 0 else 2.0 ** (4 - e) * (1 + m / 2))
    data = torch.tensor(magnitudes + [-v for v in magnitudes], dtype=torch.float32)
    return data / data.abs().max()


def int4_codebook() -> torch.Tensor:
    """Symmetric absmax int4: the values k/7, k = 7..-7, in bitsandbytes' ``get_4bit_type("int4")`` order.

    Index 0..7 hold 7/7..0, index 8..15 hold -0..-7/7 (zero appears twice; 15 distinct levels).
    bitsandbytes lists this table (its ``get_4bit_type("int4")`` raises in 0.50: an integer tensor divided in
    place) and its ``quantize_4bit`` does not accept it: it is here for comparison.
    """
    data = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, -0.0, -1, -2, -3, -4, -5, -6, -7], dtype=torch.float32)
    return data / 7


def codebook(code_type: str) -> torch.Tensor:
    """The (16,) float32 table for ``code_type`` in ("nf4", "fp4", "int4"), indexed by the 4-bit code."""
    if code_type == "nf4":
        return nf4_codebook()
    if code_type == "fp4":
        return fp4_codebook()
    if code_type == "int4":
        return int4_codebook()
    raise ValueError(f"code_type must be one of {CODE_TYPES}, got {code_type!r}")


def dynamic_codebook() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (``create_dynamic_map()``), sorted, float32, shape (256,).

    Dynamic tree quantisation (Dettmers 2015): for exponents 10**-6 .. 10**0, a linear grid of fractions in
    [0.1, 1] whose size doubles with each decade, mirrored for negatives, plus 0 and 1. Fine near zero,
    coarse near 1: the absmax constants it stores span several orders of magnitude.
    """
    data: list[float] = []
    max_exponent_bits, non_sign_bits = 7, 7
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        edges = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist() + (-scale * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


@cache
def _tables(code_type: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(code, sorted midpoints, sorted position -> code index) for quantisation."""
    code = codebook(code_type).to(device)
    # Stable sort: FP4 and int4 hold +0 and -0; bitsandbytes' CPU argsort puts +0 (index 0) first.
    order = torch.argsort(code, stable=True)
    sorted_code = code[order]
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2
    return code, midpoints, order.to(torch.uint8)


@cache
def _two_byte_table(code_type: str, device: torch.device) -> torch.Tensor:
    """(65536,) complex128: for every pair of packed bytes, read as one uint16, its four decoded codes.

    Each entry is four float32 code values (first byte's high and low nibble, then the second byte's), viewed
    as one 16-byte complex128 so that a single ``index_select`` moves all four: nothing complex is computed.
    A uint16 view of memory puts the first byte in the low 8 bits on little-endian machines, the high 8 bits
    on big-endian ones. 1 MiB per code type, built once.
    """
    code = codebook(code_type).to(device)
    value = torch.arange(65536, device=device)
    low, high = value & 0xFF, value >> 8
    first, second = (low, high) if sys.byteorder == "little" else (high, low)
    fours = torch.stack([code[first >> 4], code[first & 0xF], code[second >> 4], code[second & 0xF]], dim=1)
    return fours.contiguous().view(torch.complex128).reshape(65536)


# ------------------------------------------------------------------------------------------------
# Checks


def _check_blocksize(blocksize: int, name: str = "blocksize") -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise TypeError(
            f"{name} must be an int, one of {BLOCKSIZES}, got {type(blocksize).__name__} {blocksize!r}"
        )
    if blocksize not in BLOCKSIZES:
        raise ValueError(
            f"{name} must be a power of two from 32 to 4096 (what bitsandbytes' quantize_4bit accepts: "
            f"{BLOCKSIZES}), got {blocksize}"
        )


def _check_weight(w: torch.Tensor, name: str = "w") -> None:
    """Type, dtype and emptiness; finiteness is checked on the block absmax (see :func:`_check_finite`)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not w.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float16 or bfloat16), got {w.dtype}"
        )
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16 or bfloat16 (as in bitsandbytes), got {w.dtype}; "
            f"convert it with {name}.float()"
        )
    if w.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)}): there is nothing to quantise")


def _check_out_dtype(dtype: torch.dtype, name: str = "dtype") -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def _check_finite(w: torch.Tensor, absmax: torch.Tensor, name: str = "w") -> None:
    """Raise if ``w`` holds NaN or inf, looking only at its block absmax: a max propagates NaN and inf, so a
    finite absmax proves its block finite, and the common case costs no extra pass over ``w``."""
    if not bool(torch.isfinite(absmax).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(
            f"{name} holds {bad} NaN or infinite value(s): a block's absmax would be inf/NaN and "
            "poison every value in the block. Fix the weights first."
        )


# ------------------------------------------------------------------------------------------------
# Packing and 8-bit blockwise quantisation (for the absmax constants)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """(n,) integer codes in 0..15 -> (ceil(n/2),) uint8; element 2i in the high nibble, 2i+1 in the low.

    An odd count is padded with code 0 (bitsandbytes pads the *scaled value* with 0.0 instead, and packs
    that value's code; :func:`quantize_4bit` does the same, so use this for illustration and tests).
    """
    codes = codes.reshape(-1).to(torch.uint8)
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(ceil(n/2),) uint8 -> (n,) uint8 codes, the inverse of :func:`pack_4bit`."""
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n]


_LUT_SIZE = 65536  # bitsandbytes' CPU kernel discretises [-1, 1] into this many bins before the code look-up


@cache
def _dynamic_lut(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(dynamic code (256,), look-up table (65536,) uint8: LUT bin -> nearest code index)."""
    code = dynamic_codebook().to(device)
    midpoints = (code[:-1] + code[1:]) / 2
    centres = -1.0 + (2.0 * torch.arange(_LUT_SIZE, dtype=torch.float32, device=device)) / (_LUT_SIZE - 1)
    # A bin centre exactly on a midpoint takes the lower code ("advance while midpoint < value").
    return code, torch.bucketize(centres, midpoints).to(torch.uint8)


def quantize_blockwise_8bit(x: torch.Tensor, blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) float -> ((n,) uint8 codes into :func:`dynamic_codebook`, (ceil(n/blocksize),) float32 absmax).

    As bitsandbytes 0.50's C++ CPU kernel (``quantize_cpu_impl``): per block ``v = x * (1 / absmax)``, then
    not the exactly nearest code but a look-up: ``v`` goes to one of 65536 evenly spaced bins on [-1, 1]
    (``int((v + 1) * 0.5 * 65535 + 0.5)``) and each bin to the code nearest its centre. So a value within
    about 1.5e-5 of a midpoint can take the farther code: we copy that, to stay bit-exact. An all-zero
    block codes every value as 0 (index 0, which decodes to -1 * 0 = 0).
    """
    x = x.reshape(-1).float()
    n = x.numel()
    blocks = -(-n // blocksize)
    padded = F.pad(x, (0, blocks * blocksize - n)).view(blocks, blocksize)
    absmax = padded.abs().amax(dim=1)
    scaled = (padded * (1.0 / absmax).unsqueeze(1)).clamp(-1, 1)
    bins = ((scaled + 1.0) * 0.5 * (_LUT_SIZE - 1) + 0.5).long()
    bins = torch.where(absmax.unsqueeze(1) == 0, 0, bins)  # 0 * inf would be NaN
    _, lut = _dynamic_lut(x.device)
    codes = torch.where(absmax.unsqueeze(1) == 0, 0, lut[bins])
    return codes.reshape(-1)[:n].to(torch.uint8), absmax


def dequantize_blockwise_8bit(
    codes: torch.Tensor, absmax: torch.Tensor, blocksize: int = 256
) -> torch.Tensor:
    """(n,) uint8 codes and their (blocks,) absmax -> (n,) float32 values ``code[q] * absmax[block]``."""
    code, _ = _dynamic_lut(codes.device)
    # One gather and one in-place multiply: for the 262,144 constants of a 4096 x 4096 weight this is about 4x
    # faster than indexing, padding and multiplying into new tensors (1 thread, this course's machine).
    values = torch.index_select(code, 0, codes.reshape(-1).int())
    _scale_by_absmax_(values, absmax, 0, blocksize)
    return values


# ------------------------------------------------------------------------------------------------
# 4-bit quantisation


@dataclass
class QuantState:
    """A 4-bit quantised tensor: everything :func:`dequantize_4bit` needs.

    packed: (ceil(n/2),) uint8, two codes a byte, first element in the high nibble.
    absmax: (ceil(n/blocksize),) float32 block scales; with double quantisation, uint8 codes into
        :func:`dynamic_codebook` instead, and ``absmax2`` (ceil(blocks/256),) float32 plus ``offset`` (0-d
        float32, the mean subtracted first) say how to decode them.
    """

    packed: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 64
    code_type: str = "nf4"
    absmax2: torch.Tensor | None = None
    offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax2 is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def block_absmax(self) -> torch.Tensor:
        """The (blocks,) float32 scales, decoded from their 8-bit form when double-quantised."""
        if not self.double_quant:
            return self.absmax
        return dequantize_blockwise_8bit(self.absmax, self.absmax2, DOUBLE_QUANT_BLOCKSIZE).add_(self.offset)

    def nbytes(self) -> int:
        """Bytes of storage: packed codes plus block constants (what a 4-bit weight really costs)."""
        tensors = [self.packed, self.absmax, self.absmax2, self.offset]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def to(self, device: torch.device | str) -> QuantState:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantState(
            move(self.packed),
            move(self.absmax),
            self.shape,
            self.dtype,
            self.blocksize,
            self.code_type,
            move(self.absmax2),
            move(self.offset),
        )


def quantize_4bit(
    w: torch.Tensor, code_type: str = "nf4", blocksize: int = 64, double_quant: bool = False
) -> QuantState:
    """Quantise ``w`` (any shape, float32/float16/bfloat16, finite, non-empty) to 4 bits a value.

    Rounding follows bitsandbytes' CPU ``quantize_4bit``: values are scaled in float32, full blocks by
    multiplying with ``1 / absmax``, the partial last block by dividing by its absmax; an all-zero block
    keeps absmax 0 (a partial one stores 1e-38, bitsandbytes' clamp). A scaled value exactly on the
    midpoint between two code values goes to the LOWER one (as ``torch.bucketize``, ``right=False``).
    """
    _check_weight(w)
    _check_blocksize(blocksize)
    if code_type not in CODE_TYPES:
        raise ValueError(f"code_type must be one of {CODE_TYPES}, got {code_type!r}")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be True or False, got {double_quant!r}")
    _, midpoints, order = _tables(code_type, w.device)
    flat = w.reshape(-1).float()
    n = flat.numel()
    rem = n % blocksize
    full = n - rem
    body = flat[:full].view(-1, blocksize)
    absmax = body.abs().amax(dim=1)
    scaled = torch.mul(body, (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp_(-1, 1).reshape(-1)
    if rem:
        last = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, last.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / last, -1, 1)])
    _check_finite(w, absmax)
    if n % 2:
        scaled = F.pad(scaled, (0, 1))  # bitsandbytes pads the scaled values with 0.0 before coding
    index = _count_below(scaled, midpoints)
    codes = index if code_type == "nf4" else order[index.int()]  # NF4's table is already sorted
    packed = (codes[0::2] << 4) | codes[1::2]
    state = QuantState(packed, absmax, torch.Size(w.shape), w.dtype, blocksize, code_type)
    if double_quant:
        offset = absmax.mean()
        state.absmax, state.absmax2 = quantize_blockwise_8bit(absmax - offset, DOUBLE_QUANT_BLOCKSIZE)
        state.offset = offset
    return state


def _count_below(scaled: torch.Tensor, midpoints: torch.Tensor) -> torch.Tensor:
    """(n,) uint8: for each value, how many of the (15,) sorted midpoints lie strictly below it.

    That count is the index of the nearest code, ties to the lower one: exactly
    ``torch.bucketize(scaled, midpoints, right=False)``. 15 streaming compare-and-add passes beat bucketize's
    binary search per element on the CPU (about 1.4x on this course's 2-core test machine, in one thread and
    in two), and they need no int32 result to narrow afterwards.
    """
    count = torch.zeros(scaled.shape, dtype=torch.uint8, device=scaled.device)
    above = torch.empty(scaled.shape, dtype=torch.bool, device=scaled.device)
    for midpoint in midpoints.tolist():
        torch.gt(scaled, midpoint, out=above)
        count.add_(above.view(torch.uint8))  # bool is one byte of 0 or 1: add it as uint8, no type promotion
    return count


def dequantize_4bit(state: QuantState, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A :class:`QuantState` -> the reconstructed tensor, of the original shape, in ``dtype`` (default: the
    original dtype).

    ``code[q] * absmax`` in float32, then ONE cast to ``dtype`` (as bitsandbytes' ``dequantize_4bit(...,
    dtype)``): ask for the dtype you compute in rather than casting the result again, which would round twice.
    Works for NF4, FP4 and int4. On the CPU the work is split into contiguous ranges, one per PyTorch thread
    (see :func:`_decode_range`).
    """
    if not isinstance(state, QuantState):
        raise TypeError(f"state must be a lora101.nf4.QuantState, got {type(state).__name__}")
    dtype = _check_out_dtype(state.dtype if dtype is None else dtype)
    device = state.packed.device
    packed = state.packed
    if packed.numel() % 2 or packed.storage_offset() % 2 or not packed.is_contiguous():
        # the uint16 view needs a whole number of byte pairs, contiguous and 2-byte aligned: copy once
        pad = torch.zeros(packed.numel() % 2, dtype=torch.uint8, device=device)
        packed = torch.cat([packed.reshape(-1), pad])
    pairs = packed.view(torch.uint16)  # each entry: two bytes, four codes
    table = _two_byte_table(state.code_type, device)
    absmax = state.block_absmax()
    out = torch.empty(4 * pairs.numel(), dtype=dtype, device=device)
    # Ranges start on chunk boundaries, so every chunk starts on a block boundary (chunks hold whole blocks).
    starts = list(range(0, pairs.numel(), _DECODE_CHUNK))
    workers = min(torch.get_num_threads(), len(starts)) if device.type == "cpu" else 1
    cuts = [starts[len(starts) * i // workers] for i in range(workers)] + [pairs.numel()]
    args = (table, pairs, absmax, out, state.blocksize, state.numel)
    # PyTorch runs index_select on a 1-D table in ONE thread, but releases Python's GIL while it runs: so
    # Python threads, each decoding its own range, use every core (the look-up alone: 24 -> 13 ms on 2 cores).
    others = [
        _pool(workers).submit(_decode_range, *args, a, b) for a, b in zip(cuts[1:-1], cuts[2:], strict=True)
    ]
    _decode_range(*args, cuts[0], cuts[1])
    for job in others:
        job.result()  # re-raises a worker's exception here
    if out.dtype == torch.float32:  # scaled here, in PyTorch's threads (see _decode_range)
        _scale_by_absmax_(out[: state.numel], absmax, 0, state.blocksize)
    return out[: state.numel].view(state.shape)


_DECODE_CHUNK = 131072
"""Code pairs (four values each) decoded per step: 2 MiB of float32, a multiple of every blocksize. Small
enough that the scale and the cast find the values still in (last-level) cache, large enough that Python's
per-step overhead stays small (on the course's 2-core machine 32768 was clearly slower, 2097152 no faster)."""


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    """Threads for :func:`dequantize_4bit`, made once (the calling thread is the ``workers``-th)."""
    return ThreadPoolExecutor(max_workers=max(workers - 1, 1), thread_name_prefix="lora101-nf4")


def _decode_range(
    table: torch.Tensor,
    pairs: torch.Tensor,
    absmax: torch.Tensor,
    out: torch.Tensor,
    blocksize: int,
    n: int,
    start: int,
    stop: int,
) -> None:
    """Decode code pairs ``pairs[start:stop]`` into ``out[4 * start : 4 * stop]`` (``start`` on a block
    boundary), in chunks of :data:`_DECODE_CHUNK` pairs.

    Per chunk: ONE gather from the 65536-entry table decodes four codes (half the gathers, and half the index
    bytes, of a byte-at-a-time table). A float32 result is gathered straight into ``out`` and scaled later by
    the caller in one pass (measured faster than scaling chunk by chunk here, probably because PyTorch's own
    threads, started inside these threads, oversubscribe the cores). A bfloat16/float16 result is gathered
    and scaled by the block's absmax in a float32 scratch chunk, while it is in cache, then cast (a single
    ``torch.mul`` with a bf16/fp16 ``out=`` gives the same bits but measured slower).
    """
    chunk = min(_DECODE_CHUNK, stop - start)
    index = torch.empty(chunk, dtype=torch.int32, device=out.device)  # index_select wants int32/int64
    direct = out.dtype == torch.float32
    scratch = None if direct else torch.empty(4 * chunk, dtype=torch.float32, device=out.device)
    for first in range(start, stop, chunk):
        last = min(first + chunk, stop)
        index[: last - first].copy_(pairs[first:last])
        values = out[4 * first : 4 * last] if direct else scratch[: 4 * (last - first)]
        torch.index_select(table, 0, index[: last - first], out=values.view(torch.complex128))
        if not direct:
            _scale_by_absmax_(
                values[: max(min(4 * last, n) - 4 * first, 0)], absmax, 4 * first // blocksize, blocksize
            )
            out[4 * first : 4 * last].copy_(values)


def _scale_by_absmax_(values: torch.Tensor, absmax: torch.Tensor, first_block: int, blocksize: int) -> None:
    """Multiply ``values`` (starting at block ``first_block``; the last block may be partial) in place by
    their blocks' absmax."""
    full = values.numel() // blocksize
    values[: full * blocksize].view(full, blocksize).mul_(
        absmax[first_block : first_block + full].unsqueeze(1)
    )
    if values.numel() > full * blocksize:
        values[full * blocksize :].mul_(absmax[first_block + full])


def _lookup_scaled(
    codes: torch.Tensor, table: torch.Tensor, absmax: torch.Tensor, blocksize: int
) -> torch.Tensor:
    """(n,) codes -> (n,) float32 ``table[code] * absmax[block]``; the last block may be partial."""
    values = table[codes.long()]
    n = values.numel()
    full = n - n % blocksize
    head = (values[:full].view(-1, blocksize) * absmax[: full // blocksize].unsqueeze(1)).reshape(-1)
    if full == n:
        return head
    return torch.cat([head, values[full:] * absmax[full // blocksize]])


def dequantize_4bit_plain(
    state: QuantState, dtype: torch.dtype, code: torch.Tensor, code8: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`dequantize_4bit` in a few plain tensor operations, bit for bit the same result.

    No threads, no cached tables, no questions about memory layout: what ``torch.compile`` can trace in one
    graph. ``code`` is the (16,) table of ``state.code_type``, ``code8`` the (256,) :func:`dynamic_codebook`
    when the state is double-quantised (pass them in: building them is not traceable). Slower in eager mode.
    """
    absmax = state.absmax
    if state.double_quant:
        absmax = _lookup_scaled(absmax, code8, state.absmax2, DOUBLE_QUANT_BLOCKSIZE) + state.offset
    codes = torch.stack([state.packed >> 4, state.packed & 15], dim=-1).reshape(-1)[: state.numel]
    return _lookup_scaled(codes, code, absmax, state.blocksize).to(dtype).view(state.shape)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False) -> QuantState:
    """NF4 :func:`quantize_4bit`: equals ``bitsandbytes.functional.quantize_4bit(w, blocksize, quant_type="nf4",
    compress_statistics=double_quant)`` on the CPU (packed codes, absmax, and the 8-bit absmax state)."""
    return quantize_4bit(w, "nf4", blocksize, double_quant)


def quantize_fp4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False) -> QuantState:
    """FP4 :func:`quantize_4bit` (bitsandbytes' ``quant_type="fp4"``)."""
    return quantize_4bit(w, "fp4", blocksize, double_quant)


def quantize_int4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False) -> QuantState:
    """Symmetric absmax int4 :func:`quantize_4bit`: round(w / absmax * 7) / 7 * absmax, ties toward -inf."""
    return quantize_4bit(w, "int4", blocksize, double_quant)


dequantize_nf4 = dequantize_4bit  # one decoder for every code type: the state says which table to use


# ------------------------------------------------------------------------------------------------
# Accounting


def bits_per_parameter(
    blocksize: int = 64,
    double_quant: bool = False,
    *,
    code_bits: int = 4,
    block2: int = DOUBLE_QUANT_BLOCKSIZE,
) -> float:
    """Storage bits per weight: ``code_bits + 32 / blocksize`` (a float32 absmax per block), or with double
    quantisation ``code_bits + 8 / blocksize + 32 / (blocksize * block2)`` (8-bit absmax, a float32 scale per
    ``block2`` of them; the single float32 offset is negligible). 64 -> 4.5 and 4.127 bits."""
    _check_blocksize(blocksize)
    if double_quant:
        return code_bits + 8 / blocksize + 32 / (blocksize * block2)
    return code_bits + 32 / blocksize


def weights_memory_bytes(n_params: int, bits: float) -> float:
    """Bytes to store ``n_params`` weights at ``bits`` bits each (divide by 1e9 for GB, 2**30 for GiB)."""
    return n_params * bits / 8


def reconstruction_error(
    w: torch.Tensor, code_type: str = "nf4", blocksize: int = 64, double_quant: bool = False
) -> dict[str, float]:
    """Quantise and dequantise ``w``; return ``{"rmse", "max_abs", "bits"}`` of the float32 difference."""
    w_hat = dequantize_4bit(quantize_4bit(w, code_type, blocksize, double_quant))
    diff = (w_hat.float() - w.float()).reshape(-1)
    return {
        "rmse": float(diff.square().mean().sqrt()),
        "max_abs": float(diff.abs().max()),
        "bits": bits_per_parameter(blocksize, double_quant),
    }


def code_counts(state: QuantState) -> torch.Tensor:
    """(16,) int64: how often each 4-bit code occurs among the state's ``n`` values (padding excluded)."""
    return torch.bincount(unpack_4bit(state.packed, state.numel).long(), minlength=16)


def code_entropy(counts: torch.Tensor) -> float:
    """Shannon entropy in bits of a histogram of code usage; 4.0 is the maximum for 16 codes."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


# ------------------------------------------------------------------------------------------------
# A frozen 4-bit linear layer


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in 4 bits: ``y = x @ dequantize(W).T + b``.

    Shapes: ``x`` (..., in_features) -> (..., out_features); W is (out_features, in_features). On every call
    the weight is de-quantised straight to the input's dtype, ``code[q] * absmax`` in float32 then ONE
    rounding to x's dtype, and the bias cast to it: what bitsandbytes' ``Linear4bit`` (no ``compute_dtype``
    set) computes on the CPU, bit for bit. The input must be floating point. Nothing here trains: wrap the
    layer in ``lora101.lora.LoRALinear`` to train a LoRA adapter on top (QLoRA). The state tensors are buffers,
    so ``.to(device)`` and ``state_dict()`` carry them. ``torch.compile(layer, fullgraph=True)`` works: while
    compiling, the forward de-quantises with :func:`dequantize_4bit_plain` (same bits, traceable).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        code_type: str = "nf4",
        blocksize: int = 64,
        double_quant: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(
                f"weight must be a 2-D (out_features, in_features) tensor, got "
                f"{getattr(weight, 'shape', type(weight).__name__)}"
            )
        self.out_features, self.in_features = weight.shape
        state = quantize_4bit(weight.detach(), code_type, blocksize, double_quant)
        self.code_type, self.blocksize, self.weight_dtype = code_type, blocksize, weight.dtype
        self.register_buffer("packed", state.packed)
        self.register_buffer("absmax", state.absmax)
        self.register_buffer("absmax2", state.absmax2)
        self.register_buffer("offset", state.offset)
        # The look-up tables, for the traceable de-quantiser (not saved: they are computed, not learned).
        device = state.packed.device
        self.register_buffer("code", codebook(code_type).to(device), persistent=False)
        code8 = dynamic_codebook().to(device) if double_quant else None
        self.register_buffer("code8", code8, persistent=False)
        if bias is not None:
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.register_buffer("bias", bias.detach().clone())
        else:
            self.bias = None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, code_type: str = "nf4", blocksize: int = 64, double_quant: bool = False
    ) -> NF4Linear:
        """Quantise an ``nn.Linear``'s weight (its bias stays in full precision)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(
            linear.weight, linear.bias, code_type=code_type, blocksize=blocksize, double_quant=double_quant
        )

    @property
    def state(self) -> QuantState:
        return QuantState(
            self.packed,
            self.absmax,
            torch.Size((self.out_features, self.in_features)),
            self.weight_dtype,
            self.blocksize,
            self.code_type,
            self.absmax2,
            self.offset,
        )

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (out_features, in_features) weight in ``dtype`` (default: the dtype it was quantised from),
        rounded once from float32."""
        if torch.compiler.is_compiling():
            return dequantize_4bit_plain(self.state, dtype or self.weight_dtype, self.code, self.code8)
        return dequantize_4bit(self.state, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features), floating point -> (..., out_features), in x's dtype."""
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(
                f"x must be a floating-point tensor (float32, bfloat16 or float16), got {got}: the layer computes "
                "in x's dtype. Token ids go through an embedding first; otherwise convert with x.float()"
            )
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        dq = ", double_quant" if self.absmax2 is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{self.code_type}, blocksize={self.blocksize}{dq}"
        )
