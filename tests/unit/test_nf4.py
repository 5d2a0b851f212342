"""lora101.nf4 against bitsandbytes (CPU): codebooks, packed codes, absmax, double quantisation, ties, errors,
accounting, and the frozen 4-bit layer with a LoRA adapter (QLoRA from scratch)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

import lora101  # noqa: F401  (before bitsandbytes: silences its CPU kernel warning)
from lora101 import nf4
from lora101.lora import LoRALinear
from lora101.nf4_check import bug_applies

BF = importlib.import_module("bitsandbytes.functional")  # after lora101, which silences its CPU warning

LAYERS = (  # several shapes of real SmolLM2 weights
    "model.layers.0.self_attn.q_proj.weight",  # 576 x 576
    "model.layers.3.self_attn.k_proj.weight",  # 192 x 576
    "model.layers.7.mlp.down_proj.weight",  # 576 x 1536
    "model.layers.29.mlp.up_proj.weight",  # 1536 x 576
)


@pytest.fixture(scope="module")
def real_weights(base_model_dir) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(base_model_dir / "model.safetensors"), "pt") as f:
        return {name: f.get_tensor(name) for name in LAYERS}


def _bnb(w: torch.Tensor, quant_type: str, blocksize: int, double_quant: bool):
    packed, state = BF.quantize_4bit(
        w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
    )
    return packed, state, BF.dequantize_4bit(packed, state)


def _assert_same_as_bnb(
    w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False
):
    packed, state, ref = _bnb(w, quant_type, blocksize, double_quant)
    ours = nf4.quantize_4bit(w, quant_type, blocksize, double_quant)
    assert torch.equal(ours.packed, packed.reshape(-1)), "packed codes differ"
    assert torch.equal(ours.absmax, state.absmax), "absmax (or its 8-bit codes) differ"
    if double_quant:
        assert torch.equal(ours.absmax2, state.state2.absmax)
        assert torch.equal(ours.offset, state.offset)
    out = nf4.dequantize_4bit(ours)
    assert out.shape == w.shape and out.dtype == w.dtype
    if bug_applies(tuple(w.shape), blocksize):
        # bitsandbytes 0.50's C++ CPU dequantiser (its AVX-512 branch) picks the wrong block scales when the last
        # dimension is a multiple of 16 but not of the blocksize (lora101.nf4_check; pinned in
        # tests/conformance). Decode bitsandbytes' packed codes and absmax directly instead: code[q] * absmax of
        # the block, blocks running over the flattened tensor.
        q = torch.stack([packed.reshape(-1) >> 4, packed.reshape(-1) & 15], 1).reshape(-1)[: w.numel()].long()
        absmax = (
            BF.dequantize_blockwise(state.absmax, state.state2) + state.offset
            if double_quant
            else state.absmax
        )
        scale = absmax.repeat_interleave(blocksize)[: w.numel()]
        ref = (nf4.codebook(quant_type)[q] * scale).reshape(w.shape).to(w.dtype)
    if w.dim() == 1 and ref.shape == (1, w.numel()):
        ref = ref.reshape(
            w.shape
        )  # bitsandbytes' C++ CPU dequantiser returns a 1-D tensor as (1, n); we keep (n,)
    assert torch.equal(out, ref), "dequantised tensors differ"


# ------------------------------------------------------------------------------------------------
# Codebooks


def test_nf4_codebook_derivation_equals_bitsandbytes():
    """The quantile derivation reproduces bitsandbytes' stored table to the last bit (no scipy needed)."""
    code = nf4.nf4_codebook()
    assert code.dtype == torch.float32 and code.shape == (16,)
    assert torch.equal(code, BF.get_4bit_type("nf4", device="cpu"))
    assert code[7] == 0 and code[0] == -1 and code[15] == 1  # exact zero, ends at +-1
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7  # asymmetric halves
    # another offset gives another table: the derivation is computed, not looked up
    assert not torch.equal(nf4.nf4_codebook(offset=0.99), code)


def test_fp4_int4_dynamic_codebooks_equal_bitsandbytes():
    """FP4 and int4 tables in bitsandbytes' code order, and the 8-bit dynamic code, equal bitsandbytes'."""
    assert torch.equal(nf4.fp4_codebook(), BF.get_4bit_type("fp4", device="cpu"))
    # bitsandbytes' own get_4bit_type("int4") fails in 0.50 (its integer table cannot be divided in place)
    expected_int4 = (
        torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, 0, -1, -2, -3, -4, -5, -6, -7], dtype=torch.float32) / 7
    )
    assert torch.equal(nf4.int4_codebook(), expected_int4)
    assert torch.equal(nf4.dynamic_codebook(), BF.create_dynamic_map())
    with pytest.raises(ValueError, match="code_type"):
        nf4.codebook("nf3")


# ------------------------------------------------------------------------------------------------
# Bit-exact against bitsandbytes


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape", [(576, 576), (1536, 576), (4096,), (3, 7, 64)])
def test_gaussian_nf4_bit_exact(shape, double_quant):
    """Gaussian weights of several shapes: packed codes, absmax and dequantised tensors equal bitsandbytes'."""
    torch.manual_seed(sum(shape))
    _assert_same_as_bnb(torch.randn(shape) * 0.02, "nf4", 64, double_quant)


@pytest.mark.parametrize("double_quant", [False, True])
def test_real_smollm2_weights_nf4_bit_exact(real_weights, double_quant):
    """Real SmolLM2 weights (as stored, bf16, and in float32): bit-exact with and without double quantisation."""
    for w in real_weights.values():
        _assert_same_as_bnb(w, "nf4", 64, double_quant)
        _assert_same_as_bnb(w.float(), "nf4", 64, double_quant)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 64 * 257 + 2])
def test_partial_blocks_and_dtypes(n, dtype):
    """Any element count (partial last block, more than 256 blocks for double quant) and every input dtype."""
    torch.manual_seed(n)
    w = (torch.randn(n) * 0.05).to(dtype)
    for double_quant in (False, True):
        _assert_same_as_bnb(w, "nf4", 64, double_quant)


@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
def test_every_blocksize_nf4_and_fp4(blocksize):
    """Every blocksize bitsandbytes accepts, for NF4 and FP4."""
    torch.manual_seed(blocksize)
    w = torch.randn(96, 128) * 0.03
    for quant_type in ("nf4", "fp4"):
        _assert_same_as_bnb(w, quant_type, blocksize, double_quant=blocksize == 64)


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape",
    [
        (5, 7, 3),  # 105 values: odd count, odd number of packed bytes, one partial block
        (33, 17),  # rows shorter than a block, odd count
        (7, 40),  # rows shorter than a block, even count, partial last block
        (130, 96),  # blocks that straddle rows
        (3, 64 * 257 + 2),  # more than 256 blocks (two second-level blocks), partial last block
    ],
)
def test_fast_paths_every_output_dtype_and_odd_shape(shape, dtype, double_quant):
    """The fast quantise (compare-and-count) and de-quantise (four codes a gather, scale written in the output
    dtype) paths equal bitsandbytes for every output dtype, with and without double quantisation."""
    torch.manual_seed(math.prod(shape))
    _assert_same_as_bnb((torch.randn(shape) * 0.03).to(dtype), "nf4", 64, double_quant)


@pytest.mark.parametrize("blocksize", [32, 64, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_in_chunks_and_threads_equals_bitsandbytes(monkeypatch, blocksize, dtype):
    """De-quantisation in many chunks spread over two threads (the tests otherwise run one thread and a
    single chunk) equals bitsandbytes, a partial last block and an odd count included."""
    monkeypatch.setattr(nf4, "_DECODE_CHUNK", 1024)  # 4096 values a chunk: whole blocks for every blocksize
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(blocksize)
        w = (torch.randn(37, 1001) * 0.03).to(dtype)  # 37,037 values: 10 chunks, odd count
        for double_quant in (False, True):
            _assert_same_as_bnb(w, "nf4", blocksize, double_quant)
            _assert_same_as_bnb(w, "fp4", blocksize, double_quant)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("code_type", nf4.CODE_TYPES)
def test_count_below_equals_bucketize_on_and_around_midpoints(code_type):
    """Counting the midpoints below a value is torch.bucketize(right=False), ties and neighbours included."""
    _, midpoints, _ = nf4._tables(code_type, torch.device("cpu"))
    values = torch.cat(
        [
            torch.rand(10_000, generator=torch.Generator().manual_seed(5)) * 2 - 1,
            midpoints,
            torch.nextafter(midpoints, torch.tensor(2.0)),
            torch.nextafter(midpoints, torch.tensor(-2.0)),
            torch.tensor([-1.0, 0.0, -0.0, 1.0]),
        ]
    )
    counted = nf4._count_below(values, midpoints)
    assert counted.dtype == torch.uint8
    assert torch.equal(counted.long(), torch.bucketize(values, midpoints, right=False))


def test_dequantize_accepts_unaligned_and_strided_packed_codes():
    """A state whose packed codes start at an odd byte offset (a slice) decodes like a fresh copy."""
    torch.manual_seed(6)
    w = torch.randn(12, 64)
    state = nf4.quantize_nf4(w)
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), state.packed])[1:]  # storage offset 1
    assert shifted.storage_offset() == 1
    moved = nf4.QuantState(shifted, state.absmax, state.shape, state.dtype, state.blocksize, state.code_type)
    assert torch.equal(nf4.dequantize_nf4(moved), nf4.dequantize_nf4(state))


def test_ties_on_midpoints_go_to_the_lower_code():
    """A value exactly on the midpoint between two codes takes the lower code, in ours and in bitsandbytes."""
    for quant_type in ("nf4", "fp4"):
        code = nf4.codebook(quant_type)
        sorted_code = code.sort().values
        mids = (sorted_code[:-1] + sorted_code[1:]) / 2
        # absmax 1.0 so the scaled value is the midpoint itself (x * (1 / 1) is exact)
        w = torch.cat([torch.tensor([1.0]), mids, torch.zeros(64 - 1 - mids.numel())])
        packed, _, _ = _bnb(w, quant_type, 64, False)
        ours = nf4.quantize_4bit(w, quant_type)
        assert torch.equal(ours.packed, packed.reshape(-1))
        decoded = code[nf4.unpack_4bit(ours.packed, 64).long()][1 : 1 + mids.numel()]
        assert torch.equal(decoded, sorted_code[:-1]), f"{quant_type}: ties must go to the lower code"
        # one float32 step above the midpoint goes to the upper code
        above = torch.nextafter(mids, torch.tensor(2.0))
        w_up = torch.cat([torch.tensor([1.0]), above, torch.zeros(64 - 1 - mids.numel())])
        up = nf4.quantize_4bit(w_up, quant_type)
        assert torch.equal(code[nf4.unpack_4bit(up.packed, 64).long()][1 : 1 + mids.numel()], sorted_code[1:])
        assert torch.equal(up.packed, _bnb(w_up, quant_type, 64, False)[0].reshape(-1))


def test_zero_blocks_and_constant_absmax():
    """All-zero blocks (full and partial) and identical absmax everywhere (double quant of zeros) match."""
    w = torch.zeros(64 * 4 + 10)
    w[64:128] = 0.5
    _assert_same_as_bnb(w, "nf4", 64, False)
    _assert_same_as_bnb(w, "nf4", 64, True)
    const = torch.full((64 * 8,), 0.25)
    _assert_same_as_bnb(const, "nf4", 64, True)
    assert torch.equal(nf4.dequantize_nf4(nf4.quantize_nf4(const, double_quant=True)), const)


def test_8bit_blockwise_equals_bitsandbytes():
    """The 8-bit step (bitsandbytes' 65536-bin look-up, not exact nearest) equals quantize_blockwise's codes."""
    torch.manual_seed(0)
    x = torch.randn(50_000) * 0.01
    q, state = BF.quantize_blockwise(x, blocksize=256)
    codes, absmax = nf4.quantize_blockwise_8bit(x, 256)
    assert torch.equal(codes, q) and torch.equal(absmax, state.absmax)
    assert torch.equal(nf4.dequantize_blockwise_8bit(codes, absmax, 256), BF.dequantize_blockwise(q, state))


def test_packing_nibble_order_and_round_trip():
    """First element in the high nibble; pack/unpack round-trip for odd and even counts."""
    assert nf4.pack_4bit(torch.tensor([1, 2])).tolist() == [0x12]
    assert nf4.pack_4bit(torch.tensor([15, 0, 7])).tolist() == [0xF0, 0x70]
    codes = torch.randint(0, 16, (1001,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(nf4.unpack_4bit(nf4.pack_4bit(codes), 1001), codes.to(torch.uint8))


def test_int4_is_rounding_to_sevenths():
    """int4 = round(w / absmax * 7) / 7 * absmax (away from exact ties), 15 levels."""
    torch.manual_seed(1)
    w = torch.randn(64 * 10)
    state = nf4.quantize_int4(w)
    out = nf4.dequantize_4bit(state)
    absmax = w.view(-1, 64).abs().amax(1, keepdim=True)
    expected = (torch.round(w.view(-1, 64) * (1 / absmax) * 7) / 7 * absmax).reshape(-1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert nf4.code_counts(state).sum() == w.numel()


def test_dequantize_shape_dtype_and_error_ordering():
    """Round trip keeps shape and dtype; on Gaussian data NF4 beats FP4 and int4 in RMSE."""
    torch.manual_seed(2)
    w = torch.randn(256, 256, dtype=torch.bfloat16)
    out = nf4.dequantize_nf4(nf4.quantize_nf4(w))
    assert out.shape == w.shape and out.dtype == torch.bfloat16
    errs = {t: nf4.reconstruction_error(w.float(), t)["rmse"] for t in nf4.CODE_TYPES}
    assert errs["nf4"] < errs["int4"] and errs["nf4"] < errs["fp4"]
    # NF4 codes of normal data are nearly equiprobable: entropy close to the 4-bit maximum
    assert nf4.code_entropy(nf4.code_counts(nf4.quantize_nf4(torch.randn(1 << 16)))) > 3.8
    assert nf4.code_entropy(torch.ones(16)) == pytest.approx(4.0)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_messages():
    """Non-floating, float64, NaN/inf, empty tensors and bad blocksizes fail with errors naming the argument."""
    with pytest.raises(TypeError, match="w must be a floating-point"):
        nf4.quantize_nf4(torch.ones(64, dtype=torch.int32))
    with pytest.raises(TypeError, match="w must be float32"):
        nf4.quantize_nf4(torch.ones(64, dtype=torch.float64))
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        nf4.quantize_nf4([1.0, 2.0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (5, 130):  # a full block, and the partial last block
            for dtype in (torch.float32, torch.bfloat16):
                w = torch.ones(140, dtype=dtype)
                w[where] = bad
                with pytest.raises(ValueError, match="w holds 1 NaN or infinite"):
                    nf4.quantize_nf4(w)
    with pytest.raises(ValueError, match="w is empty"):
        nf4.quantize_nf4(torch.empty(0, 4))
    for bs in (16, 48, 8192, 0, -64):
        with pytest.raises(ValueError, match="blocksize must be a power of two from 32 to 4096"):
            nf4.quantize_nf4(torch.ones(64), blocksize=bs)
    with pytest.raises(TypeError, match="blocksize must be an int"):
        nf4.quantize_nf4(torch.ones(64), blocksize=64.0)
    with pytest.raises(TypeError, match="double_quant"):
        nf4.quantize_nf4(torch.ones(64), double_quant=1)
    with pytest.raises(TypeError, match="state must be"):
        nf4.dequantize_nf4(torch.ones(4))


# ------------------------------------------------------------------------------------------------
# Accounting


def test_bits_per_parameter_and_7b_memory():
    """4.5 bits without, 4 + 8/64 + 32/(64*256) ~ 4.127 with double quantisation; matches real storage."""
    assert nf4.bits_per_parameter(64) == 4.5
    assert nf4.bits_per_parameter(64, True) == pytest.approx(4.127, abs=5e-4)
    assert nf4.bits_per_parameter(64, True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert nf4.weights_memory_bytes(7_000_000_000, 4.5) == pytest.approx(3.9375e9)
    assert nf4.weights_memory_bytes(7_000_000_000, 16) == 14e9
    # measured bytes of a real state: 64 * 256 * 4 values, a whole number of both block levels
    n = 64 * 256 * 4
    w = torch.randn(n)
    assert nf4.quantize_nf4(w).nbytes() * 8 / n == 4.5
    dq_bits = nf4.quantize_nf4(w, double_quant=True).nbytes() * 8 / n
    assert dq_bits == pytest.approx(nf4.bits_per_parameter(64, True) + 32 / n)  # + the one float32 offset


# ------------------------------------------------------------------------------------------------
# NF4Linear and QLoRA from scratch


def test_nf4linear_forward_equals_bitsandbytes_linear4bit():
    """The frozen layer computes x @ dequant(W).T + b in x's dtype, equal to bitsandbytes' Linear4bit."""
    import bitsandbytes as bnb

    torch.manual_seed(3)
    lin = nn.Linear(192, 96)
    with torch.no_grad():
        lin.weight.mul_(0.3)
    ours = nf4.NF4Linear.from_linear(lin, double_quant=True)
    assert (ours.in_features, ours.out_features) == (192, 96)
    assert list(ours.parameters()) == []  # nothing to train in the base
    theirs = bnb.nn.Linear4bit(
        192, 96, compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4"
    )
    theirs.load_state_dict(lin.state_dict())
    theirs = theirs.to("cpu")  # quantises on the move, like a model load
    x = torch.randn(5, 7, 192)
    assert torch.equal(
        ours.dequantized_weight(), BF.dequantize_4bit(theirs.weight.data, theirs.weight.quant_state)
    )
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    assert ours(x.bfloat16()).dtype == torch.bfloat16
    no_bias = nf4.NF4Linear(lin.weight)
    torch.testing.assert_close(no_bias(x), x @ no_bias.dequantized_weight().T)
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        nf4.NF4Linear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="weight must be a 2-D"):
        nf4.NF4Linear(torch.randn(4))


def test_nf4linear_refuses_integer_input_and_rounds_once():
    """Token ids (integers) are refused by name; a bf16 weight meets a float32 input in float32, rounded once."""
    torch.manual_seed(11)
    layer = nf4.NF4Linear(torch.randn(16, 64).bfloat16(), torch.randn(16).bfloat16())
    for bad in (torch.ones(2, 64, dtype=torch.long), torch.ones(2, 64, dtype=torch.bool)):
        with pytest.raises(TypeError, match="x must be a floating-point tensor .* got torch"):
            layer(bad)
    x = torch.randn(3, 64)
    weight = layer.dequantized_weight(torch.float32)
    assert weight.dtype == torch.float32 and layer.dequantized_weight().dtype == torch.bfloat16
    assert torch.equal(layer(x), torch.nn.functional.linear(x, weight, layer.bias.float()))
    assert not torch.equal(weight, layer.dequantized_weight().float())  # a second rounding would change it
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        nf4.dequantize_4bit(layer.state, torch.int8)


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("code_type", nf4.CODE_TYPES)
def test_plain_dequantizer_equals_the_fast_one(code_type, double_quant):
    """The traceable de-quantiser gives the threaded one's bits, every output dtype, a partial last block."""
    torch.manual_seed(12)
    layer = nf4.NF4Linear(torch.randn(37, 101), code_type=code_type, double_quant=double_quant)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        plain = nf4.dequantize_4bit_plain(layer.state, dtype, layer.code, layer.code8)
        assert torch.equal(plain, nf4.dequantize_4bit(layer.state, dtype))


def test_nf4linear_compiles_in_one_graph():
    """torch.compile(fullgraph=True) traces the layer (AOT autograd, no code generation: seconds) and the
    compiled layer, wrapped in LoRA, gives the eager outputs and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(13)
    base = nf4.NF4Linear(torch.randn(48, 64).bfloat16(), torch.randn(48), double_quant=True)
    layer = LoRALinear(base, r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 64)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), layer(x))
    compiled(x).sum().backward()
    grad = layer.lora_A.grad.clone()
    layer.lora_A.grad = None
    layer(x).sum().backward()
    torch.testing.assert_close(grad, layer.lora_A.grad)
    torch._dynamo.reset()


@pytest.mark.slow
def test_nf4linear_compiles_with_inductor():
    """The default backend generates code (a minute on a cold cache): same outputs as eager."""
    torch._dynamo.reset()
    layer = nf4.NF4Linear(torch.randn(32, 64), double_quant=True)
    x = torch.randn(4, 64)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x), atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


def test_qlora_from_scratch_trains_the_adapter_only():
    """LoRALinear(NF4Linear) with alpha != r and non-zero B: exact forward, grads only in A and B, loss falls."""
    torch.manual_seed(4)
    lin = nn.Linear(128, 64)
    base = nf4.NF4Linear.from_linear(lin)
    layer = LoRALinear(base, r=8, alpha=32)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.05)
    x = torch.randn(32, 128)
    expected = x @ base.dequantized_weight().T + lin.bias + (x @ layer.lora_A.T @ layer.lora_B.T) * (32 / 8)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    target = torch.randn(32, 64)
    opt = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=1e-2)
    packed_before = base.packed.clone()
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert torch.equal(base.packed, packed_before)  # the 4-bit base never changes
    assert math.isfinite(losses[-1])


# ------------------------------------------------------------------------------------------------
# The lesson's helpers: plots, the explorer, the benchmark


def test_plots_and_explorer_run_on_real_weights(real_weights, capsys):
    """The lesson's figures build, and the explorer recomputes when its controls move."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lora101 import plots
    from lora101.widgets import quantization_explorer

    w = next(iter(real_weights.values())).float()
    scaled = (w.view(-1, 64) / w.view(-1, 64).abs().amax(1, keepdim=True)).reshape(-1)
    codes = {t.upper(): nf4.codebook(t) for t in nf4.CODE_TYPES}
    assert len(plots.plot_codebook_over_histogram(scaled, codes).axes) == 1
    errors = {"q": {t: 0.1 for t in nf4.CODE_TYPES}, "k": {t: 0.2 for t in nf4.CODE_TYPES}}
    assert len(plots.plot_error_by_layer_type(errors).axes[0].patches) == 6
    usage = {t: (torch.ones(16), 4.0) for t in nf4.CODE_TYPES}
    assert len(plots.plot_code_usage(usage).axes) == 3
    plt.close("all")
    explorer = quantization_explorer({k: v.float() for k, v in real_weights.items()})
    layer, code_type, blocksize, double_quant = explorer.children[:4]
    code_type.value, blocksize.value, double_quant.value = "fp4", 128, True
    explorer.update()
    # outside a kernel the explorer's output area passes prints through to stdout
    assert "4.0635 bits/parameter" in capsys.readouterr().out  # 4 + 8/128 + 32/(128*256)
    plt.close("all")


def test_benchmark_runs_and_checks_bit_identity(capsys):
    """`lora101 bench nf4` on a small matrix prints the timing table (after its bit-identity check)."""
    import argparse

    from lora101.bench import nf4 as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = ["--size", "256", "--repeats", "1", "--no-errors", "--dtypes", "float32,bfloat16"]
    assert bench.run(parser.parse_args(args)) == 0
    out = capsys.readouterr().out
    assert "dequantise (bfloat16, double quant)" in out and "target <= 1.0x" in out
    assert "copy bandwidth: clone()" in out and "GB/s" in out
    # the bytes each operation moves: 256*256 float32 weights + 32,768 code bytes + 1,024 float32 absmax
    assert f"{(256 * 256 * 4 + 256 * 128 + 1024 * 4) / 1e6:>8.1f}" in out
    # a one-line usage error: SystemExit, or lora101.errors.OptionError (a ValueError) that the CLI prints
    with pytest.raises((SystemExit, ValueError), match="--dtypes: unknown dtype"):
        bench.run(parser.parse_args(["--size", "64", "--dtypes", "float64", "--no-errors"]))
