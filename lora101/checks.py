"""Answer checks for the graded exercises (``exercises/``): each raises ``AssertionError`` with a message
that says what is wrong and hints at why.

Test cells in the exercises call these after a fresh reload::

    import importlib

    import lora101.checks

    checks = importlib.reload(lora101.checks)

Reloading re-runs this module, which (1) replaces any function a learner's cell patched on the module and
(2) puts back the comparison helpers a learner's cell might have replaced (``torch.allclose``,
``torch.equal``...; comparisons of numbers use a private ``_isclose``). The reference values come from the package (``lora101.lora``,
``lora101.memory``) or from first principles written out here; hidden tests in the notebooks compare
against independent values as well. A determined learner can still subvert a Python kernel they control
(for example by replacing ``importlib.reload`` itself); these defences stop the plausible shortcuts, and
a tampered reload fails closed (an error, hence zero points) rather than open.
"""

from __future__ import annotations

import torch
from torch import nn

from lora101.lora import LoRALinear
from lora101.memory import NF4_BITS, ModelShape, lora_parameter_count

__all__ = [
    "SMOLLM2_SHAPE",
    "NF4_CODE",
    "lora_params",
    "linear_shapes",
    "model_lora_params",
    "training_memory",
    "lora_init",
    "lora_forward",
    "lora_merge",
    "lora_rslora",
    "lora_bf16",
    "absmax_blocks",
    "nf4_codes",
    "pack_nibbles",
    "dequantize",
    "reference_codes",
    "reference_absmax",
    "reference_quantize",
    "bits_per_param",
    "bnb_config",
    "lora_config",
    "trainable_params",
    "choose_route",
    "reference_route",
]


def _untamper() -> None:
    """Put back comparison helpers a learner's cell may have monkeypatched (the C originals)."""
    vf = torch._C._VariableFunctions
    for name in ("allclose", "equal", "isclose", "all", "any"):
        setattr(torch, name, getattr(vf, name))


_untamper()


def _isclose(a: float, b: float, rel_tol: float = 1e-9, abs_tol: float = 0.0) -> bool:
    """math.isclose, written out here so that patching math.isclose cannot change a check."""
    a, b = float(a), float(b)
    return abs(a - b) <= max(rel_tol * max(abs(a), abs(b)), abs_tol)


# SmolLM2-135M-Instruct's shapes (its config.json): what exercise 1 and 4 count with.
SMOLLM2_SHAPE = dict(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)

# bitsandbytes' NF4 code: 16 values, normal quantiles scaled to [-1, 1], with an exact zero.
NF4_CODE = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def _close(got, want, rel=1e-9, what="the value") -> None:
    assert isinstance(got, (int, float)) and not isinstance(got, bool), (
        f"{what} should be a number, got {type(got).__name__} ({got!r})"
    )
    assert _isclose(float(got), float(want), rel_tol=rel, abs_tol=1e-12), (
        f"{what}: got {got}, expected {want}"
    )


# ---------------------------------------------------------------- 1. memory arithmetic


def _memory_shape():
    s = SMOLLM2_SHAPE
    return ModelShape(
        "smollm2-135m",
        s["hidden"],
        s["layers"],
        s["intermediate"],
        s["vocab"],
        s["heads"],
        s["kv_heads"],
        s["head_dim"],
        True,
    )


def lora_params(fn) -> None:
    """``fn(d_in, d_out, r)``: the adapter parameters of one linear layer, ``r * (d_in + d_out)``."""
    got = fn(576, 576, 8)
    assert got != 576 * 576, (
        "that is the layer's own weight count; the adapter is A (r x d_in) plus B (d_out x r)"
    )
    _close(got, 8 * (576 + 576), what="lora_params(576, 576, 8)")
    got = fn(576, 192, 4)
    assert got != 2 * 576 * 4, (
        "lora_params(576, 192, 4): A has r x d_in entries and B has d_out x r; a non-square layer has d_in != d_out"
    )
    _close(got, 4 * (576 + 192), what="lora_params(576, 192, 4)")


def linear_shapes(fn) -> None:
    """``fn(shape_dict)`` -> {name: (in_features, out_features)} for one block."""
    want = _memory_shape().linear_shapes()
    got = fn(dict(SMOLLM2_SHAPE))
    assert isinstance(got, dict), f"linear_shapes should return a dict, got {type(got).__name__}"
    assert set(got) == set(want), f"expected the seven projections {sorted(want)}, got {sorted(got)}"
    for name, (fin, fout) in want.items():
        assert tuple(got[name]) == (fin, fout), (
            f"{name}: got {tuple(got[name])}, expected (in_features, out_features) = {(fin, fout)}"
            + (
                "; k/v project to kv_heads * head_dim (grouped-query attention)"
                if name in ("k_proj", "v_proj")
                else ""
            )
            + ("; (in, out), not (out, in)" if tuple(got[name]) == (fout, fin) else "")
        )


def model_lora_params(fn) -> None:
    """``fn(shape_dict, r, target_modules)``: adapter parameters over all layers, checked by lora101.memory."""

    shape = _memory_shape()
    for r, targets in ((8, ["q_proj", "v_proj"]), (16, ["q_proj", "k_proj", "v_proj", "o_proj"])):
        want = lora_parameter_count(shape, r, targets)
        got = fn(dict(SMOLLM2_SHAPE), r, list(targets))
        if isinstance(got, (int, float)) and got * SMOLLM2_SHAPE["layers"] == want:
            raise AssertionError(
                f"r={r}, {targets}: {got} is one layer; every one of the 30 blocks has these projections"
            )
        _close(got, want, what=f"model_lora_params(SMOLLM2, r={r}, {targets})")


# Exercise 1's stated assumptions, in bytes per parameter.
FULL_BYTES = 2 + 2 + 8 + 4  # bf16 weight + bf16 gradient + AdamW's two fp32 moments + fp32 master copy
ADAPTER_BYTES = 4 + 4 + 8  # fp32 adapter weight + fp32 gradient + AdamW moments


def reference_memory_gb(n_params: float, method: str, n_trainable: float = 0) -> float:
    """Exercise 1's model answer: weights + gradients + optimizer (+ master weights), no activations, in 1e9 B."""

    if method == "full":
        return n_params * FULL_BYTES / 1e9
    base = {"lora": 2.0, "qlora": NF4_BITS / 8}[method]
    return (n_params * base + n_trainable * ADAPTER_BYTES) / 1e9


def training_memory(fn) -> None:
    """``fn(n_params, method, n_trainable)`` in decimal GB under the notebook's stated assumptions."""
    got = fn(7e9, "full", 0)
    if isinstance(got, (int, float)):
        assert not _isclose(got, 7e9 * 12 / 1e9), (
            "full fine-tuning: 12 B/param forgets the fp32 master copy (4 B)"
        )
        assert not _isclose(got, 7e9 * 16 / 2**30), "use decimal gigabytes (1e9 bytes), as GPU spec sheets do"
    _close(got, reference_memory_gb(7e9, "full"), rel=1e-6, what="training_memory_gb(7e9, 'full')")
    got = fn(7e9, "lora", 40e6)
    _close(
        got,
        reference_memory_gb(7e9, "lora", 40e6),
        rel=1e-6,
        what="training_memory_gb(7e9, 'lora', 40e6) (frozen bf16 base: weights only; adapters pay 16 B each)",
    )
    got = fn(7e9, "qlora", 40e6)
    if isinstance(got, (int, float)) and _isclose(got, (7e9 * 0.5 + 40e6 * 16) / 1e9):
        raise AssertionError(
            "qlora: 4 bits is only the codes; each block of 64 also stores its (quantised) absmax"
        )
    _close(
        got, reference_memory_gb(7e9, "qlora", 40e6), rel=1e-6, what="training_memory_gb(7e9, 'qlora', 40e6)"
    )


# ---------------------------------------------------------------- 2. a LoRA layer (float32 or bf16 base, rsLoRA)


def _scaling(r, alpha, use_rslora):
    return alpha / (r**0.5 if use_rslora else r)


def _build(cls, base, r, alpha, use_rslora):
    # Only pass use_rslora when it is asked for, so that the plain tests do not depend on the keyword.
    return cls(base, r, alpha, use_rslora=True) if use_rslora else cls(base, r, alpha)


def _layer(cls, fin=20, fout=12, r=4, alpha=8.0, seed=0, use_rslora=False, dtype=torch.float32):
    torch.manual_seed(seed)
    base = nn.Linear(fin, fout).to(dtype)
    w0 = base.weight.detach().clone()
    layer = _build(cls, base, r, alpha, use_rslora)
    return base, w0, layer


def _reference(base: nn.Linear, layer, r, alpha, use_rslora=False):
    """lora101.lora.LoRALinear with the learner's A and B on a copy of the base: float32 adapter path, its
    result cast to the base's dtype."""

    ref_base = nn.Linear(base.in_features, base.out_features).to(base.weight.dtype)
    ref_base.load_state_dict(base.state_dict())
    ref = LoRALinear(ref_base, r, alpha, use_rslora=use_rslora)
    with torch.no_grad():
        ref.lora_A.copy_(layer.lora_A)
        ref.lora_B.copy_(layer.lora_B)
    return ref


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _call(layer, x: torch.Tensor) -> torch.Tensor:
    """layer(x), with PyTorch's dtype-mismatch error turned into a hint."""
    try:
        return layer(x)
    except RuntimeError as e:
        if "dtype" not in str(e) and "BFloat16" not in str(e):
            raise
        raise AssertionError(
            f"forward on a {_dtype_name(x.dtype)} input failed ({str(e).splitlines()[0]}): compute the adapter path "
            "in float32 (x.float() @ A.T @ B.T) and cast its result to the dtype of base(x)"
        ) from e


def lora_init(cls, fin=20, fout=12, r=4, alpha=8.0, use_rslora=False, dtype=torch.float32) -> None:
    """Shapes (PEFT's convention), B zero, A not zero, float32 adapter, base frozen, scaling alpha / r (or
    alpha / sqrt(r) with ``use_rslora=True``)."""
    base, w0, layer = _layer(cls, fin, fout, r, alpha, use_rslora=use_rslora, dtype=dtype)
    for name in ("lora_A", "lora_B"):
        assert isinstance(getattr(layer, name, None), nn.Parameter), (
            f"{name} should be an nn.Parameter (trainable)"
        )
    A, B = layer.lora_A, layer.lora_B
    assert tuple(A.shape) == (r, fin), (
        f"lora_A has shape {tuple(A.shape)}; expected (r, in_features) = {(r, fin)}: A maps the input down to r"
    )
    assert tuple(B.shape) == (fout, r), (
        f"lora_B has shape {tuple(B.shape)}; expected (out_features, r) = {(fout, r)}"
    )
    assert A.dtype == torch.float32 and B.dtype == torch.float32, (
        f"lora_A is {_dtype_name(A.dtype)} and lora_B {_dtype_name(B.dtype)} on a {_dtype_name(dtype)} base: the "
        "adapter is created in float32 whatever the base's dtype (bf16 keeps 8 significant bits, so small "
        "optimizer steps on bf16 weights round away)"
    )
    assert torch.count_nonzero(B.detach()) == 0, (
        "lora_B must start at zero, so that a new adapter changes nothing"
    )
    assert torch.count_nonzero(A.detach()) > 0, (
        "lora_A must not start at zero: with A = B = 0 no gradient reaches B"
    )
    assert A.requires_grad and B.requires_grad, "A and B are what trains: they need requires_grad=True"
    assert not base.weight.requires_grad, "the base weight must be frozen (requires_grad=False)"
    assert not _isclose(float(layer.scaling), r / alpha), "scaling is alpha / r, not r / alpha"
    want = _scaling(r, alpha, use_rslora)
    if use_rslora:
        assert not _isclose(float(layer.scaling), alpha / r), (
            f"use_rslora=True asks for rsLoRA's scaling alpha / sqrt(r) = {want:g}, not the plain alpha / r"
        )
    else:
        assert not _isclose(float(layer.scaling), alpha / r**0.5), (
            "without use_rslora the scaling is the plain alpha / r; alpha / sqrt(r) only when use_rslora=True"
        )
    _close(float(layer.scaling), want, what=f"scaling for r={r}, alpha={alpha}, use_rslora={use_rslora}")
    x = torch.randn(3, fin).to(dtype)
    with torch.no_grad():
        got = _call(layer, x)
        assert got.dtype == dtype, (
            f"a {_dtype_name(dtype)} input on a {_dtype_name(dtype)} base gave {_dtype_name(got.dtype)}"
        )
        assert torch.allclose(got.float(), base(x).float(), atol=1e-6), (
            "with B = 0 the layer's output must equal the base's"
        )


def _bf16_tolerance(want: torch.Tensor) -> float:
    # A few units in the last place of bf16 (8 significant bits) at the size of the outputs.
    return 4 * 2.0**-8 * float(want.float().abs().max()) + 1e-6


def lora_forward(
    cls, fin=20, fout=12, r=4, alpha=8.0, batch_shape=(3,), use_rslora=False, dtype=torch.float32
) -> None:
    """With a non-zero B, forward equals base(x) + scaling * x A^T B^T (lora101.lora.LoRALinear's output), in
    the base's dtype."""
    base, _, layer = _layer(cls, fin, fout, r, alpha, use_rslora=use_rslora, dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_()  # a trained adapter: B no longer zero
    ref = _reference(base, layer, r, alpha, use_rslora)
    x = torch.randn(*batch_shape, fin).to(dtype)
    with torch.no_grad():
        got, want = _call(layer, x), ref(x)
        assert tuple(got.shape) == tuple(want.shape), (
            f"output shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        )
        assert got.dtype == want.dtype, (
            f"on a {_dtype_name(dtype)} base the output should be {_dtype_name(want.dtype)} (the next layer expects "
            f"it), got {_dtype_name(got.dtype)}: cast the float32 adapter path back before adding it"
        )
        atol = 1e-5 if dtype == torch.float32 else _bf16_tolerance(want)
        s = _scaling(r, alpha, use_rslora)
        unscaled = base(x).float() + x.float() @ layer.lora_A.T @ layer.lora_B.T
        assert not (s != 1 and torch.allclose(got.float(), unscaled, atol=atol)), (
            "the adapter's output must be scaled"
        )
        if use_rslora:
            plain = base(x).float() + (alpha / r) * (x.float() @ layer.lora_A.T @ layer.lora_B.T)
            assert not torch.allclose(got.float(), plain, atol=atol), (
                "use_rslora=True: scale by alpha / sqrt(r), not alpha / r"
            )
        diff = (got.float() - want.float()).abs().max()
        assert diff <= atol, (
            f"forward differs from base(x) + scaling * x @ A.T @ B.T by up to {diff:.3g} (allowed {atol:.2g})"
        )


def _rounded_once(weight: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per entry: is ``weight`` the value nearest ``exact`` in its own dtype (float32 merges: within float32's
    rounding)? A tie broken either way, and float32 noise in how the update was computed, are both fair."""
    w, exact = weight.detach().double(), exact.double()
    if weight.dtype == torch.float32:
        return (w - exact).abs() <= 1e-5 * exact.abs() + 1e-6
    nearest = exact.to(weight.dtype).double()
    return (w - exact).abs() <= (nearest - exact).abs() + 2.0**-20 * exact.abs() + 1e-12


def _check_merged_weight(weight: torch.Tensor, w0: torch.Tensor, delta: torch.Tensor, s: float) -> None:
    """After merge(): the weight is W + delta rounded once to W's dtype (``delta`` in float64, scaled by s)."""
    dtype = w0.dtype
    assert weight.dtype == dtype, (
        f"merge() turned the {_dtype_name(dtype)} weight into {_dtype_name(weight.dtype)}: the layers "
        f"around it still compute in {_dtype_name(dtype)}; round the merged weight back to its own dtype"
    )
    exact = w0.double() + delta
    if _rounded_once(weight, exact).all():
        return
    # within a few units of bf16's last place at the weights' scale: right up to rounding, rounded more than once
    near = ((weight.double() - exact).abs() <= 2.0**-5 * exact.abs().max()).all()
    if s != 1 and _rounded_once(weight, w0.double() + delta / s).all():
        raise AssertionError(
            "after merge() the base weight should be W + scaling * B @ A (the scaling is missing)"
        )
    if dtype != torch.float32 and near:
        bad = int((~_rounded_once(weight, exact)).sum())
        raise AssertionError(
            f"after merge() {bad} of {weight.numel()} {_dtype_name(dtype)} weights are not the nearest "
            f"{_dtype_name(dtype)} value to W + scaling * B @ A: the update was rounded twice (to {_dtype_name(dtype)} "
            f"before the addition, or added in {_dtype_name(dtype)}). Add it in float32 and round the sum once: "
            "weight.copy_(weight.float() + scaling * B @ A)"
        )
    raise AssertionError("after merge() the base weight should be W + scaling * B @ A")


def _check_unmerged_weight(weight: torch.Tensor, w0: torch.Tensor, merged_weight: torch.Tensor) -> None:
    """After unmerge(): the original weight, bit for bit."""
    assert weight.dtype == w0.dtype, f"unmerge() changed the weight's dtype to {_dtype_name(weight.dtype)}"
    if torch.equal(weight, merged_weight):
        raise AssertionError(
            "unmerge() left the merged weight in place: it should restore the original weight"
        )
    wrong = (weight != w0).sum().item()
    off = (weight.float() - w0.float()).abs().max().item()
    why = f" (by up to {off:.2g}): W + d is rounded to the weight's precision, so subtracting d again does not give W"
    if w0.dtype != torch.float32:
        why += f" back ({_dtype_name(w0.dtype)} keeps only 8 significant bits)"
    why += "; keep what you need to restore it at merge()"
    assert wrong == 0, (
        f"unmerge() should restore the original weight bit for bit; {wrong} of {w0.numel()} entries differ{why}"
    )


def lora_merge(cls, fin=20, fout=12, r=4, alpha=8.0, use_rslora=False, dtype=torch.float32) -> None:
    """merge() folds scaling * B @ A into the weight (rounded once to its dtype; same outputs; merged=True);
    unmerge() restores the original weight bit for bit. A second merge() or unmerge() changes nothing."""
    base, w0, layer = _layer(cls, fin, fout, r, alpha, use_rslora=use_rslora, dtype=dtype)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, fin).to(dtype)
    s = _scaling(r, alpha, use_rslora)
    with torch.no_grad():
        before = _call(layer, x)
        delta = s * layer.lora_B.detach().double() @ layer.lora_A.detach().double()
        layer.merge()
        assert getattr(layer, "merged", None) is True, "after merge(), layer.merged should be True"
        _check_merged_weight(base.weight, w0, delta, s)
        merged_weight = base.weight.detach().clone()
        atol = 1e-5 if dtype == torch.float32 else 2 * _bf16_tolerance(before)
        assert (layer(x).float() - before.float()).abs().max() <= atol, (
            "merged forward differs from the unmerged one: once merged, the adapter must not be added again"
        )
        layer.merge()
        assert torch.equal(base.weight, merged_weight) and layer.merged is True, (
            "merge() on a layer that is already merged should change nothing (PEFT warns and does nothing): the "
            "update is in the weight once, and unmerge() must still find the original weight"
        )
        layer.unmerge()
        assert getattr(layer, "merged", None) is False, "after unmerge(), layer.merged should be False"
        _check_unmerged_weight(base.weight, w0, merged_weight)
        layer.unmerge()
        assert torch.equal(base.weight, w0) and layer.merged is False, (
            "unmerge() on a layer that is not merged should change nothing (PEFT warns and does nothing)"
        )
        assert torch.allclose(layer(x).float(), before.float(), atol=1e-6), (
            "after unmerge() the forward should be as before"
        )


def _twins(cls, fin, fout, r, alpha, use_rslora=(False, False), dtypes=(torch.float32, torch.float32)):
    """Two of the learner's layers on bases with the same weights (the first's values, exactly), with the same
    non-zero A and B: what the rsLoRA and bfloat16 checks compare, so that they judge only what that option
    changes and a mistake the other test cells catch is not charged again."""
    torch.manual_seed(0)
    first = nn.Linear(fin, fout).to(dtypes[0])
    second = nn.Linear(fin, fout).to(dtypes[1])
    second.load_state_dict({k: v.to(dtypes[1]) for k, v in first.state_dict().items()})
    layers = [_build(cls, b, r, alpha, rs) for b, rs in zip((first, second), use_rslora, strict=True)]
    with torch.no_grad():
        layers[0].lora_B.normal_()
        layers[1].lora_A.copy_(layers[0].lora_A)
        layers[1].lora_B.copy_(layers[0].lora_B)
    return (first, second), layers


def _times(a: torch.Tensor, b: torch.Tensor) -> float:
    """The factor k that makes k * b closest to a."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a @ b) / (b @ b)) if float(b @ b) > 0 else float("nan")


def lora_rslora(cls, fin=20, fout=12, r=4, alpha=8.0) -> None:
    """``use_rslora=True``: scaling alpha / sqrt(r), and forward and merge() use it. Judged against the
    learner's own plain layer with the same A and B (its update must be sqrt(r) times as large)."""
    want = alpha / r**0.5
    (b_rs, b_plain), (rs, plain) = _twins(cls, fin, fout, r, alpha, use_rslora=(True, False))
    got = getattr(rs, "scaling", None)
    assert isinstance(got, (int, float)), f"layer.scaling should be a number, got {got!r}"
    assert not _isclose(float(got), alpha / r), (
        f"use_rslora=True asks for rsLoRA's scaling alpha / sqrt(r) = {want:g}, not the plain alpha / r"
    )
    _close(float(got), want, what=f"scaling for r={r}, alpha={alpha}, use_rslora=True (alpha / sqrt(r))")
    own = getattr(plain, "scaling", None)
    if not isinstance(own, (int, float)) or own == 0:
        return  # the plain layer's scaling is the initialisation test's business
    ratio = want / float(own)
    x = torch.randn(3, fin)
    with torch.no_grad():
        k = _times(rs(x) - b_rs(x), plain(x) - b_plain(x))
        assert k != k or _isclose(k, ratio, rel_tol=1e-4), (
            f"forward with use_rslora=True adds {k:.4g} times the plain layer's update; its scaling alpha / sqrt(r) "
            f"= {want:g} against {float(own):g} makes that {ratio:.4g}: forward should use self.scaling"
        )
        w_rs, w_plain = b_rs.weight.detach().clone(), b_plain.weight.detach().clone()
        rs.merge()
        plain.merge()
        k = _times(b_rs.weight - w_rs, b_plain.weight - w_plain)
        assert k != k or _isclose(k, ratio, rel_tol=1e-4), (
            f"merge() with use_rslora=True adds {k:.4g} times the plain layer's update to the weight; it should "
            f"be {ratio:.4g} (alpha / sqrt(r) = {want:g}): merge() should use self.scaling"
        )


def lora_bf16(cls, fin=20, fout=12, r=4, alpha=8.0) -> None:
    """A bfloat16 base: float32 adapter, outputs in bf16, the merged weight in bf16 rounded once, and unmerge()
    exact. Judged against the learner's own layer on a float32 copy of the same base, so that a mistake the
    float32 test cells catch is not charged again."""
    bf16 = torch.bfloat16
    (b16, b32), (l16, l32) = _twins(cls, fin, fout, r, alpha, dtypes=(bf16, torch.float32))
    for name in ("lora_A", "lora_B"):
        p = getattr(l16, name)
        assert p.dtype == torch.float32, (
            f"{name} is {_dtype_name(p.dtype)} on a bfloat16 base: the adapter is created in float32 whatever the "
            "base's dtype (bf16 keeps 8 significant bits, so small optimizer steps on bf16 weights round away)"
        )
    x = torch.randn(3, fin).to(bf16)
    with torch.no_grad():
        got, want = _call(l16, x), l32(x.float())
        assert got.dtype == bf16, (
            f"on a bfloat16 base the output should be bfloat16 (the next layer expects it), got "
            f"{_dtype_name(got.dtype)}: cast the float32 adapter path back before adding it"
        )
        diff, atol = (got.float() - want.float()).abs().max(), _bf16_tolerance(want)
        assert diff <= atol, (
            f"on a bfloat16 base forward differs from the same layer on a float32 copy of the base by up to "
            f"{diff:.3g} (bf16 rounding allows {atol:.2g})"
        )
        w16, w32 = b16.weight.detach().clone(), b32.weight.detach().clone()
        l16.merge()
        l32.merge()
        _check_merged_weight(b16.weight, w16, b32.weight.double() - w32.double(), 1.0)
        merged = b16.weight.detach().clone()
        l16.unmerge()
        l32.unmerge()
        assert b16.weight.dtype == bf16, (
            f"unmerge() changed the weight's dtype to {_dtype_name(b16.weight.dtype)}"
        )
        if torch.equal(b32.weight, w32):  # a float32 unmerge that is not exact is the merge test's business
            _check_unmerged_weight(b16.weight, w16, merged)


# ---------------------------------------------------------------- 3. NF4


def _gauss(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * 0.02


def reference_absmax(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    flat = w.reshape(-1).float()
    return torch.stack([flat[i : i + blocksize].abs().max() for i in range(0, flat.numel(), blocksize)])


def reference_codes(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Nearest NF4 value to w / absmax; ties to the lower index (argmin's first); an all-zero block -> code 7."""
    code = torch.tensor(NF4_CODE)
    flat = w.reshape(-1).float()
    scale = reference_absmax(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]
    scale = torch.where(
        scale == 0, torch.ones_like(scale), scale
    )  # 0 / 0 would be NaN; the values are 0 anyway
    return (flat / scale).unsqueeze(1).sub(code).abs().argmin(1).to(torch.uint8)


ZERO_CODE = 7  # the index of NF4's exact 0.0

# Values exactly halfway between two neighbouring NF4 values (in float32), and the lower index each rounds to.
NF4_TIES = {(NF4_CODE[i] + NF4_CODE[i + 1]) / 2: i for i in (2, 6, 7, 9, 11, 13)}


def absmax_blocks(fn) -> None:
    """``fn(w, blocksize)`` -> one absmax per block of the flattened tensor, the last block possibly partial."""
    w = _gauss(64 * 5).reshape(20, 16)
    got = fn(w, 64)
    assert isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}"
    assert got.numel() == 5, f"320 values in blocks of 64 make 5 blocks, got {got.numel()} constants"
    assert torch.allclose(got.reshape(-1).float(), reference_absmax(w, 64)), (
        "each constant is max(|w|) over its block"
    )
    w = _gauss(64 * 3 + 10, seed=1)
    got = fn(w, 64)
    assert got.numel() == 4, (
        f"202 values in blocks of 64: 3 full blocks and a partial one, 4 constants; got {got.numel()}"
    )
    assert torch.allclose(got.reshape(-1).float(), reference_absmax(w, 64)), (
        "the partial last block gets its own absmax"
    )
    assert got.dtype == torch.float32, f"return float32 constants, got {got.dtype}"
    w = torch.cat([_gauss(64), torch.zeros(64), _gauss(64, seed=3)])
    got = fn(w, 64)
    assert got.reshape(-1).tolist()[1] == 0.0, "an all-zero block's absmax is 0"


def nf4_codes(fn) -> None:
    """``fn(w, blocksize)`` -> uint8 code indices (0..15), nearest NF4 value to w / absmax of its block."""
    w = _gauss(64 * 4)
    got = fn(w, 64)
    assert isinstance(got, torch.Tensor) and got.numel() == w.numel(), "one code per weight, as a tensor"
    assert int(got.min()) >= 0 and int(got.max()) <= 15, "codes are indices 0..15 into the NF4 code"
    assert got.dtype == torch.uint8, (
        f"codes should be a uint8 tensor, got {got.dtype}: a code takes 4 bits, and {got.dtype} would spend "
        f"{torch.empty(0, dtype=got.dtype).element_size() * 8} bits on each (argmin gives int64: convert it)"
    )
    want = reference_codes(w, 64)
    bad = (got.reshape(-1).to(torch.int64) != want.to(torch.int64)).sum().item()
    assert bad == 0, (
        f"{bad} of {w.numel()} codes differ from the nearest NF4 value to w / absmax (its block's)"
    )
    # Exact ties: a block whose absmax is 1, holding values exactly halfway between two NF4 values.
    ties = list(NF4_TIES)
    w = torch.tensor([1.0] + ties + [0.0] * (64 - 1 - len(ties)))
    got = fn(w, 64).reshape(-1)[1 : 1 + len(ties)].to(torch.int64).tolist()
    want = list(NF4_TIES.values())
    assert got == want, (
        f"values exactly halfway between two NF4 values {[round(t, 4) for t in ties]} got codes {got}; "
        f"a tie goes to the lower index (as argmin and bitsandbytes do): {want}"
    )
    # An all-zero block: absmax 0, and 0 / 0 is NaN.
    w = torch.cat([_gauss(64), torch.zeros(64)])
    got = fn(w, 64).reshape(-1)[64:].to(torch.int64)
    assert (got == ZERO_CODE).all(), (
        f"an all-zero block got codes {sorted(set(got.tolist()))}; its values are 0.0, whose index is {ZERO_CODE} "
        "(dividing by its absmax of 0 gives NaN: treat that block's scale as 1, or any non-zero number)"
    )


def pack_nibbles(fn) -> None:
    """``fn(codes)`` -> uint8 bytes, two codes a byte, the first code in the high nibble (bitsandbytes' order)."""
    codes = torch.tensor([1, 2, 15, 0, 7, 8], dtype=torch.uint8)
    got = fn(codes)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8, "pack into a uint8 tensor"
    assert got.numel() == 3, f"6 codes make 3 bytes, got {got.numel()}"
    assert got.reshape(-1).tolist() != [0x21, 0x0F, 0x87], (
        "nibble order: bitsandbytes puts the FIRST code in the HIGH nibble"
    )
    assert got.reshape(-1).tolist() == [0x12, 0xF0, 0x78], (
        f"expected bytes [0x12, 0xF0, 0x78], got {got.reshape(-1).tolist()}"
    )
    got = fn(torch.tensor([3, 4, 5], dtype=torch.uint8))
    assert got.reshape(-1).tolist() == [0x34, 0x50], (
        "an odd count: the last byte holds the last code and a zero low nibble"
    )


def reference_pack(codes: torch.Tensor) -> torch.Tensor:
    """Two codes a byte, the first in the high nibble (bitsandbytes' order); an odd count ends in a zero nibble."""
    c = codes.reshape(-1).to(torch.uint8)
    if c.numel() % 2:
        c = torch.cat([c, torch.zeros(1, dtype=torch.uint8)])
    return (c[0::2] << 4) | c[1::2]


def reference_quantize(w: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes, absmax per block) of ``w``, made here: what the dequantisation check hands the learner."""
    return reference_pack(reference_codes(w, blocksize)), reference_absmax(w, blocksize)


def dequantize(fn) -> None:
    """``fn(packed, absmax, n, blocksize)`` -> float32 (n,) = NF4_CODE[code] * absmax of its block, on packed
    codes made by this module (so that a packing or coding mistake is charged to its own test, not here); an
    odd ``n`` leaves a padding nibble that must be dropped."""
    code = torch.tensor(NF4_CODE)
    for n, seed in ((64 * 3 + 6, 2), (64 * 2 + 5, 3)):
        w = _gauss(n, seed=seed)
        packed, absmax = reference_quantize(w, 64)
        got = fn(packed.clone(), absmax.clone(), n, 64)
        assert isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}"
        assert got.numel() == n, (
            f"dequantize(packed, absmax, n={n}, 64) gave {got.numel()} values; expected {n}"
            + (
                f": {packed.numel()} bytes hold {2 * packed.numel()} nibbles, the last one padding (n is odd): "
                "keep the first n codes"
                if n % 2 and got.numel() == n + 1
                else ""
            )
        )
        want = code[reference_codes(w, 64).long()] * absmax.repeat_interleave(64)[:n]
        assert torch.allclose(got.reshape(-1).float(), want, atol=1e-7), (
            "each value is NF4_CODE[code] * absmax of its block (the codes come high nibble first)"
        )
        assert got.dtype == torch.float32, f"return float32 values, got {got.dtype}"


def bits_per_param(fn) -> None:
    """``fn(blocksize, double_quant)``: 4 + 32/blocksize, or 4 + 8/blocksize + 32/(blocksize*256) with double quant."""
    _close(fn(64, False), 4 + 32 / 64, what="bits_per_param(64, double_quant=False)")
    got = fn(64, True)
    if isinstance(got, (int, float)) and _isclose(got, 4 + 8 / 64):
        raise AssertionError(
            "double quantisation also stores an fp32 constant per 256 blocks: 32 / (64 * 256) bits"
        )
    if isinstance(got, (int, float)) and _isclose(got, 4 + 32 / 64):
        raise AssertionError(
            "bits_per_param(64, double_quant=True) gave 4.5, the figure without double quantisation. With it, each "
            "block's absmax is stored in 8 bits instead of 32 (8 / 64 = 0.125 bits a parameter) and every 256 "
            "blocks share one more 32-bit constant (32 / (64 * 256) = 0.002): 4 + 0.125 + 0.002 = 4.127"
        )
    _close(got, 4 + 8 / 64 + 32 / (64 * 256), what="bits_per_param(64, double_quant=True)")


# ---------------------------------------------------------------- 4. QLoRA configuration


def bnb_config(cfg) -> None:
    """The stated constraints: 4-bit NF4, double quantisation, compute in bfloat16."""
    from transformers import BitsAndBytesConfig

    assert isinstance(cfg, BitsAndBytesConfig), (
        f"return a transformers.BitsAndBytesConfig, got {type(cfg).__name__}"
    )
    assert cfg.load_in_4bit and not cfg.load_in_8bit, "load the base in 4 bits (load_in_4bit=True)"
    assert cfg.bnb_4bit_quant_type == "nf4", f"quant type {cfg.bnb_4bit_quant_type!r}: QLoRA uses 'nf4'"
    assert cfg.bnb_4bit_use_double_quant, "double quantisation saves about 0.37 bits a parameter: turn it on"
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16, (
        f"compute dtype {cfg.bnb_4bit_compute_dtype}: the constraint asks for bfloat16"
    )


def _smollm2_module_names() -> list[str]:
    """The full names of SmolLM2's linear layers, as PEFT matches ``target_modules`` against them."""
    attn = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(SMOLLM2_SHAPE["layers"]) for p in "qkvo"]
    mlp = [
        f"model.layers.{i}.mlp.{p}_proj"
        for i in range(SMOLLM2_SHAPE["layers"])
        for p in ("gate", "up", "down")
    ]
    return attn + mlp + ["lm_head"]


def _is_all_linear(target_modules) -> bool:
    from peft.utils import INCLUDE_LINEAR_LAYERS_SHORTHAND

    return isinstance(target_modules, str) and target_modules.lower() == INCLUDE_LINEAR_LAYERS_SHORTHAND


def _adapted(cfg, names: list[str]) -> list[str]:
    """The modules among ``names`` that PEFT adapts with ``cfg.target_modules``. 'all-linear' is expanded when
    PEFT wraps a model (every linear layer except the output layer of a model that has one, lm_head here), so
    it matches no name on its own: expand it as PEFT does."""
    from peft.tuners.tuners_utils import check_target_module_exists

    if _is_all_linear(cfg.target_modules):
        return [n for n in names if n != "lm_head"]
    return [n for n in names if check_target_module_exists(cfg, n)]


def lora_config(
    cfg, r=16, scaling=4.0, dropout=0.05, targets=("q_proj", "k_proj", "v_proj", "o_proj")
) -> None:
    """A peft.LoraConfig with the stated rank, rsLoRA scaling, dropout, attention targets and task type.
    ``target_modules`` may be a list or set of names or a regular expression: it is judged by the modules of
    SmolLM2 that PEFT would adapt with it."""
    from peft import LoraConfig

    assert isinstance(cfg, LoraConfig), f"return a peft.LoraConfig, got {type(cfg).__name__}"
    assert cfg.r == r, f"r = {cfg.r}, the constraint says {r}"
    assert cfg.use_rslora, "the constraint asks for rsLoRA's scaling alpha / sqrt(r): set use_rslora=True"
    want_alpha = scaling * r**0.5
    assert not _isclose(cfg.lora_alpha, scaling * r), (
        f"lora_alpha = {cfg.lora_alpha:g} is plain LoRA's arithmetic (alpha / r = {scaling:g}); with rsLoRA the "
        f"scaling is alpha / sqrt(r) = {cfg.lora_alpha / r**0.5:g}, so a scaling of {scaling:g} needs alpha = {want_alpha:g}"
    )
    assert _isclose(cfg.lora_alpha, want_alpha), (
        f"lora_alpha = {cfg.lora_alpha:g} gives an rsLoRA scaling alpha / sqrt(r) of {cfg.lora_alpha / r**0.5:g}, "
        f"not {scaling:g}"
    )
    assert _isclose(cfg.lora_dropout, dropout), f"lora_dropout = {cfg.lora_dropout}, expected {dropout}"
    names = _smollm2_module_names()
    adapted = _adapted(cfg, names)
    want = [n for n in names if n.rsplit(".", 1)[-1] in targets and ".self_attn." in n]
    kinds = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    shorthand = _is_all_linear(cfg.target_modules)
    assert adapted == want, (
        f"target_modules={cfg.target_modules!r} adapts {len(adapted)} of SmolLM2's linear layers ({kinds}); the "
        f"constraint is the four attention projections {list(targets)} of every block ({len(want)} layers)"
        + (
            "; 'all-linear' is PEFT's shorthand for every linear layer but the output layer (lm_head)"
            if shorthand
            else "; a single string is a regular expression over the whole module name"
            if isinstance(cfg.target_modules, str)
            else ""
        )
    )
    assert str(getattr(cfg.task_type, "value", cfg.task_type)) == "CAUSAL_LM", "task_type should be CAUSAL_LM"
    assert cfg.bias == "none", "train no biases (bias='none'): SmolLM2's projections have none anyway"


def trainable_params(got, r=16, targets=("q_proj", "k_proj", "v_proj", "o_proj")) -> None:
    """The adapter's trainable parameters on SmolLM2-135M (lora101.memory.lora_parameter_count)."""

    want = lora_parameter_count(_memory_shape(), r, targets)
    assert isinstance(got, int) and not isinstance(got, bool), f"give an int, got {type(got).__name__}"
    assert got != want // SMOLLM2_SHAPE["layers"], "that is one block; SmolLM2 has 30"
    assert got == want, f"got {got:,}; expected {want:,} trainable parameters (k/v are 576 -> 192)"


# ---------------------------------------------------------------- 5. tradeoffs: the decision path


HEADROOM = 1.2


def reference_route(c: dict) -> str:
    """Exercise 5's decision path (prompting, clarify, full, lora, qlora, smaller_model)."""

    if c["prompting_good_enough"]:
        return "prompting"
    if not c["task_boundary_clear"]:
        return "clarify"
    gb = c["n_params"] / 1e9
    if c["want_full_capacity"] and gb * FULL_BYTES <= c["gpu_memory_gb"]:
        return "full"
    if gb * 2 * HEADROOM <= c["gpu_memory_gb"]:
        return "lora"
    if gb * NF4_BITS / 8 * HEADROOM <= c["gpu_memory_gb"]:
        return "qlora"
    return "smaller_model"


def route_cases() -> list[dict]:
    """Constraint sets that walk every branch of the path (a 7B model on a 12 GB GPU among them: QLoRA), with
    a model that fits each route at exactly the GPU's memory (the products are exact in floating point, in
    whatever order they are computed) and full fine-tuning that fits but is not wanted."""
    base = dict(
        prompting_good_enough=False,
        task_boundary_clear=True,
        n_params=7e9,
        gpu_memory_gb=12,
        want_full_capacity=False,
    )
    cases = [
        base,
        {**base, "prompting_good_enough": True},
        {**base, "task_boundary_clear": False},
        {**base, "gpu_memory_gb": 80},
        {**base, "gpu_memory_gb": 17},
        {**base, "gpu_memory_gb": 16},
        {**base, "n_params": 70e9, "gpu_memory_gb": 24},
        {**base, "n_params": 1e9, "gpu_memory_gb": 16, "want_full_capacity": True},
        {**base, "n_params": 7e9, "gpu_memory_gb": 80, "want_full_capacity": True},
        {**base, "n_params": 39.5e9, "gpu_memory_gb": 24},  # 4 bits would fit; NF4's constants do not
        {**base, "n_params": 1e9, "gpu_memory_gb": 80},  # full would fit, but is not wanted
        {**base, "n_params": 2e9, "gpu_memory_gb": 32, "want_full_capacity": True},  # full at exactly 32 GB
        {**base, "n_params": 7e9, "gpu_memory_gb": 16.8},  # lora at exactly 7 x 2 x 1.2 GB
        {**base, "n_params": 32e9, "gpu_memory_gb": 19.809375},  # qlora at exactly 32 x NF4_BITS / 8 x 1.2 GB
    ]
    return cases


def _route_needs(c: dict) -> dict[str, float]:
    """The memory each fine-tuning route needs, in decimal GB, as the notebook states it."""

    gb = c["n_params"] / 1e9
    return {"full": gb * FULL_BYTES, "lora": gb * 2 * HEADROOM, "qlora": gb * NF4_BITS / 8 * HEADROOM}


def _route_hint(c: dict, got, want: str) -> str:
    """Why ``want`` and not ``got``, for the two mistakes that are easy to make."""
    needs = _route_needs(c)
    if got == "full" and not c["want_full_capacity"]:
        return (
            f"; full fine-tuning fits ({needs['full']:g} GB) but is not wanted (want_full_capacity=False): the "
            "path takes it only when the task needs every weight to change"
        )
    if want in needs and needs[want] == c["gpu_memory_gb"]:
        return f"; the {want} route needs exactly {needs[want]!r} GB, the GPU's memory: 'fits' means <="
    return ""


def choose_route(fn) -> None:
    """``fn(c)`` -> the route of exercise 5's decision path, on constraint sets that walk every branch."""
    for c in route_cases():
        got, want = fn(dict(c)), reference_route(c)
        assert got == want, (
            f"choose_route({c}) returned {got!r}; the path in the notebook gives {want!r}"
            + _route_hint(c, got, want)
        )
