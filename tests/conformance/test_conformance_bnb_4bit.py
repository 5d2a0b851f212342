"""lora101.nf4 beside bitsandbytes on the CPU, on the grids of bitsandbytes' own 4-bit tests
(``tests/test_functional.py``, ``test_ops.py``, ``test_linear4bit.py``): every blocksize from 32 to 4096, fp32 /
fp16 / bf16, NF4 and FP4, double quantisation, non-contiguous inputs, sizes that are not a multiple of the
blocksize, random codes, and the 4-bit linear layer. Bit for bit, not within a tolerance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora101 import nf4
from lora101.nf4_check import bitsandbytes_dequantize_check, bug_applies

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
QUANT_TYPES = ["nf4", "fp4"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
def test_4bit_quant_every_blocksize(assert_4bit_matches, blocksize, quant_type, dtype):
    """test_4bit_quant's grid (a 1024 x 1024 Gaussian there, 256 x 512 here): codes, scales, round trip."""
    torch.manual_seed(blocksize)
    assert_4bit_matches(torch.randn(256, 512, dtype=dtype), quant_type, blocksize)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 128])
def test_4bit_compressed_stats(assert_4bit_matches, blocksize, quant_type, dtype):
    """test_4bit_compressed_stats: double quantisation of the block scales, and its error stays close to plain."""
    torch.manual_seed(blocksize + 1)
    w = torch.randn(128, 1024, dtype=dtype)
    plain, _ = assert_4bit_matches(w, quant_type, blocksize, False)
    double, _ = assert_4bit_matches(w, quant_type, blocksize, True)
    err = {
        k: (nf4.dequantize_4bit(s).float() - w.float()).abs().mean() for k, s in (("1", plain), ("2", double))
    }
    assert err["2"] < err["1"] * 1.01  # 8-bit scales cost well under 1% of the error


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [64, 128, 256])
def test_not_divisible_by_blocksize(assert_4bit_matches, blocksize, quant_type, dtype):
    """test_quantize_4bit_not_divisible_by_blocksize: shape (7, blocksize - 1), odd rows, a partial last block."""
    torch.manual_seed(blocksize + 2)
    for double_quant in (False, True):
        assert_4bit_matches(torch.randn(7, blocksize - 1, dtype=dtype), quant_type, blocksize, double_quant)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [64, 128, 256])
def test_non_contiguous_input(assert_4bit_matches, blocksize, quant_type, dtype):
    """test_quantize_4bit_non_contiguous (bitsandbytes' issue 1342): a strided slice quantises like its copy."""
    torch.manual_seed(blocksize + 3)
    full = torch.randn(3, 4, 6, 256, dtype=dtype)
    sliced = full[:, ::2]
    assert not sliced.is_contiguous()
    ours, _ = assert_4bit_matches(sliced, quant_type, blocksize)
    copy = nf4.quantize_4bit(sliced.contiguous(), quant_type, blocksize)
    assert torch.equal(ours.packed, copy.packed) and torch.equal(ours.absmax, copy.absmax)
    transposed = torch.randn(96, 64, dtype=dtype).T  # another kind of non-contiguous
    assert_4bit_matches(transposed, quant_type, blocksize, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 512])
def test_dequantize_random_codes(bnb_reference_decode, dtype, quant_type, blocksize):
    """test_dequantize_4bit: random packed bytes and random (signed) scales decode the same, shape (128, 128)
    (with blocks of 256 and 512 a row is shorter than a block: there bitsandbytes' CPU kernel is wrong on
    AVX-512 CPUs, and its reference decoder is the judge)."""
    g = torch.Generator().manual_seed(blocksize)
    n = 128 * 128
    packed = torch.randint(0, 256, (n // 2,), dtype=torch.uint8, generator=g)
    absmax = torch.randn(-(-n // blocksize), generator=g)
    state = nf4.QuantState(packed, absmax, torch.Size((128, 128)), dtype, blocksize, quant_type)
    theirs = torch.ops.bitsandbytes.dequantize_4bit.default(
        packed.reshape(-1, 1), absmax, blocksize, quant_type, (128, 128), dtype
    )
    reference = bnb_reference_decode(packed, absmax, quant_type, blocksize, (128, 128), dtype)
    assert torch.equal(nf4.dequantize_4bit(state), reference)
    assert torch.equal(theirs, reference) != bug_applies((128, 128), blocksize)


@pytest.mark.parametrize(
    "shape", [(1,), (3,), (63,), (65,), (64 * 257 + 2,), (5, 7, 3), (33, 17), (2, 3, 4, 5)]
)
@pytest.mark.parametrize("quant_type", QUANT_TYPES)
def test_odd_sizes(assert_4bit_matches, shape, quant_type):
    """Odd element counts, one element, more than 256 blocks (two second-level blocks), several dimensions."""
    torch.manual_seed(len(shape))
    for double_quant in (False, True):
        assert_4bit_matches(torch.randn(shape), quant_type, 64, double_quant)


# ------------------------------------------------------------------------------------------------
# The 4-bit linear layer


def _linear4bit(weight: torch.Tensor, bias, quant_type: str, blocksize: int, double_quant: bool):
    """bitsandbytes' Linear4bit holding ``weight`` in its own dtype, quantised as a model load does."""
    import bitsandbytes as bnb

    fout, fin = weight.shape
    layer = bnb.nn.Linear4bit(
        fin, fout, bias=bias is not None, compress_statistics=double_quant, quant_type=quant_type
    )
    layer.weight = bnb.nn.Params4bit(
        weight.clone(),
        requires_grad=False,
        compress_statistics=double_quant,
        quant_type=quant_type,
        blocksize=blocksize,
    )
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone(), requires_grad=False)
    # Training mode: in eval mode on a CPU with AVX512-BF16, bitsandbytes 0.50 repacks the weight for a fused
    # bf16 kernel (bf16 activations and scales), another computation; see test_linear4bit_eval_mode_on_avx512bf16.
    return layer.to("cpu").train()


@pytest.mark.parametrize("weight_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("quant_type", "blocksize", "double_quant"), [("nf4", 64, True), ("fp4", 32, False), ("nf4", 4096, False)]
)
def test_nf4linear_bit_equal_to_linear4bit(weight_dtype, x_dtype, quant_type, blocksize, double_quant):
    """test_matmul_4bit's CPU grid through the layers: the weight de-quantised straight to x's dtype (one
    rounding), the bias cast to it; outputs equal bitsandbytes' Linear4bit bit for bit, any weight/input dtype."""
    torch.manual_seed(7)
    weight, bias = (torch.randn(256, 128) * 0.05).to(weight_dtype), torch.randn(256).to(weight_dtype)
    ours = nf4.NF4Linear(weight, bias, code_type=quant_type, blocksize=blocksize, double_quant=double_quant)
    theirs = _linear4bit(weight, bias, quant_type, blocksize, double_quant)
    assert theirs.weight.quant_state.dtype == weight_dtype
    x = torch.randn(3, 5, 128).to(x_dtype)
    with torch.no_grad():
        expected = theirs(x)
    assert expected.dtype == x_dtype
    assert torch.equal(ours(x), expected)
    no_bias = _linear4bit(weight, None, quant_type, blocksize, double_quant)
    with torch.no_grad():
        assert torch.equal(
            nf4.NF4Linear(weight, code_type=quant_type, blocksize=blocksize, double_quant=double_quant)(x),
            no_bias(x),
        )


def test_nf4linear_rounds_once(BF):
    """A bf16 weight and a float32 input: the weight the layer uses is code * absmax in float32, not first
    rounded to bf16 (that second rounding was up to 4e-3 off bitsandbytes)."""
    torch.manual_seed(8)
    weight = torch.randn(64, 128).bfloat16()
    layer = nf4.NF4Linear(weight)
    once = layer.dequantized_weight(torch.float32)
    twice = layer.dequantized_weight().float()
    assert not torch.equal(once, twice)
    packed, state = BF.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    state.dtype = torch.float32  # ask bitsandbytes for float32 straight from the codes
    assert torch.equal(once, BF.dequantize_4bit(packed, state))


def test_linear4bit_wrong_where_the_kernel_bug_applies():
    """in_features = 48 (a multiple of 16, not of 64): Linear4bit de-quantises through the buggy CPU kernel."""
    torch.manual_seed(9)
    weight = torch.randn(8, 48) * 0.05
    ours, theirs = nf4.NF4Linear(weight), _linear4bit(weight, None, "nf4", 64, False)
    x = torch.randn(4, 48)
    with torch.no_grad():
        gap = (ours(x) - theirs(x)).abs().max().item()
    if bug_applies((8, 48), 64):
        assert gap > 1e-2, (
            "Linear4bit agrees now: bitsandbytes' CPU de-quantiser is fixed (see test_bnb_cpu_bug)"
        )
    else:
        assert gap == 0


# ------------------------------------------------------------------------------------------------
# The known bitsandbytes CPU bug, pinned


def test_bnb_cpu_bug():
    """bitsandbytes 0.50's CPU dequantize_4bit is wrong for a (8, 48) weight in blocks of 64 on AVX-512 CPUs
    (its AVX-512 branch indexes block scales per row: ``lora101.nf4_check``). This test asserts today's WRONG
    result there; when it fails with "fixed", a fixed bitsandbytes has arrived: update lesson 4's words and
    drop the workaround in the tests (``bug_applies``)."""
    result = bitsandbytes_dequantize_check(torch.randn(8, 48, generator=torch.Generator().manual_seed(0)), 64)
    assert result["same_codes"] and result["lora101_equals_reference"]
    assert result["lora101_max_error"] == pytest.approx(0.3108, abs=1e-3)
    if not result["bug_expected"]:  # no AVX-512 here: bitsandbytes takes its scalar loop, which is right
        assert result["bitsandbytes_equals_reference"]
        return
    assert not result["bitsandbytes_equals_reference"], (
        f"fixed: bitsandbytes {result['bitsandbytes_version']} de-quantises (8, 48) in blocks of 64 correctly on "
        "this AVX-512 CPU now. Update lesson 4's demonstration, lora101/nf4_check.py and this test."
    )
    assert result["bitsandbytes_max_error"] == pytest.approx(1.655, abs=1e-2)  # vs lora101's 0.311


def test_linear4bit_eval_mode_on_avx512bf16():
    """Linear4bit in eval mode, no grad, on a CPU with AVX512-BF16 (bitsandbytes 0.50): it repacks the weight
    for a fused kernel that computes in bf16 (float32 in, float32 out, bf16 inside), so it is NOT the float32
    computation, and it fails outright when in_features is not a multiple of the blocksize."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip(
            "this CPU has no AVX512-BF16: Linear4bit's eval mode is the same computation as training mode"
        )
    torch.manual_seed(10)
    weight = torch.randn(64, 128) * 0.05
    ours, theirs = nf4.NF4Linear(weight), _linear4bit(weight, None, "nf4", 64, False).eval()
    x = torch.randn(4, 128)
    with torch.no_grad():
        gap = (ours(x) - theirs(x)).abs().max().item()
    assert 1e-4 < gap < 5e-2  # bf16 arithmetic: close, not equal
    odd = _linear4bit(torch.randn(64, 96) * 0.05, None, "nf4", 64, False).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="is invalid for input of size"):
        odd(torch.randn(4, 96))
