"""lora101.lora: the layer against PEFT's, merging, gradients, injection into SmolLM2, the PEFT export, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import lora101  # noqa: F401  (before peft/bitsandbytes: silences bitsandbytes' CPU kernel warning)
from lora101.lora import (
    LoRALinear,
    count_parameters,
    disable_adapter,
    inject_lora,
    load_lora_state_dict,
    load_peft_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_peft_adapter,
)

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL = ATTN + ["gate_proj", "up_proj", "down_proj"]


def _layer(fin=48, fout=40, r=4, alpha=12.0, bias=True, seed=0, **kw) -> LoRALinear:
    """A LoRALinear with a non-zero B (a zero B hides every bug in the adapter path) and alpha != r."""
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(fin, fout, bias=bias), r=r, alpha=alpha, **kw)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.5)
    return layer


def _peft_layer(ours: LoRALinear):
    """PEFT's lora.Linear on a copy of the same base, given the same A and B."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    cfg = LoraConfig(r=ours.r, lora_alpha=ours.alpha, use_rslora=ours.use_rslora, target_modules=["x"])
    theirs = PeftLinear(
        copy.deepcopy(ours.base_layer), "default", config=cfg, r=ours.r, lora_alpha=ours.alpha
    )
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    return theirs


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_same_outputs_and_merged_weights_as_peft(rslora, bias):
    ours = _layer(r=4, alpha=12.0, bias=bias, use_rslora=rslora)
    theirs = _peft_layer(ours)
    assert ours.scaling == pytest.approx(theirs.scaling["default"])
    assert ours.scaling == pytest.approx(12 / 2 if rslora else 12 / 4)
    x = torch.randn(3, 7, 48)
    assert not torch.allclose(ours(x), ours.base_layer(x), atol=1e-3)  # the adapter really contributes
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(ours.base_layer.weight, theirs.base_layer.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=0)


def test_fresh_adapter_changes_nothing_and_init_is_kaiming_like_peft():
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    layer = LoRALinear(base, r=8, alpha=16)
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = (
        1 / 64**0.5
    )  # kaiming_uniform_(a=sqrt(5)) on a (r, 64) matrix draws from U(-1/sqrt(64), 1/sqrt(64))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.8 * bound
    assert layer.lora_A.shape == (8, 64) and layer.lora_B.shape == (32, 8)


def test_merge_unmerge_round_trip():
    layer = _layer(r=6, alpha=10.0)
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 48)
    before = layer(x)
    layer.merge()
    assert layer.merged
    assert not torch.allclose(layer.base_layer.weight, original, atol=1e-3)
    torch.testing.assert_close(layer.base_layer.weight, original + layer.delta_weight(), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), layer.base_layer(x), atol=0, rtol=0)  # merged: the base alone
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), before, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()


def test_merging_a_broken_adapter_is_refused_and_the_base_kept():
    """NaN or inf in A or B: merge() refuses and changes nothing, so the base can always be had back."""
    layer = _layer()
    original = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_A[1, 2] = float("nan")  # one column of B @ A: 40 values
    with pytest.raises(ValueError, match="adapter is broken: scaling \\* B @ A holds 40 NaN"):
        layer.merge()
    assert not layer.merged and torch.equal(layer.base_layer.weight, original)


def test_disable_adapter_gives_the_base_and_restores_a_merge():
    """Inside the context manager the base alone (a merged layer unmerged); after it, exactly as before."""
    layer = _layer(r=3, alpha=7.0)
    x = torch.randn(4, 48)
    with torch.no_grad():
        adapted, base = layer(x), layer.base_layer(x)
        with layer.disable_adapter() as same:
            assert same is layer and layer.disabled
            torch.testing.assert_close(layer(x), base, atol=0, rtol=0)
        assert not layer.disabled and torch.equal(layer(x), adapted)
        layer.merge()
        with disable_adapter(nn.Sequential(layer)):
            assert not layer.merged
            torch.testing.assert_close(layer(x), base, atol=1e-6, rtol=0)
        assert layer.merged
        torch.testing.assert_close(layer(x), adapted, atol=1e-5, rtol=0)


def test_save_then_load_peft_adapter_round_trip(tmp_path):
    """What save_peft_adapter writes, load_peft_adapter reads back into a fresh model: same outputs."""
    torch.manual_seed(0)
    model = inject_lora(Tiny(), ["q_proj", "mlp.0"], r=2, alpha=3, use_rslora=True)
    fresh = copy.deepcopy(model)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_()
    save_peft_adapter(model, tmp_path / "a")
    plain = Tiny()
    plain.load_state_dict(
        {k.replace(".base_layer", ""): v for k, v in fresh.state_dict().items() if "lora_" not in k}
    )
    loaded = load_peft_adapter(plain, tmp_path / "a")
    x = torch.randn(3, 8)
    for name in ("block.q_proj", "block.mlp.0"):
        torch.testing.assert_close(loaded.get_submodule(name)(x), model.get_submodule(name)(x))
    assert {m.use_rslora for m in lora_layers(loaded).values()} == {True}


def test_gradients_flow_only_into_A_and_B():
    layer = _layer(dropout=0.1)
    layer.train()
    layer(torch.randn(6, 48)).pow(2).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert not layer.base_layer.weight.requires_grad


def test_dropout_acts_on_the_adapter_input_only_in_training():
    layer = _layer(dropout=0.5)
    x = torch.randn(64, 48)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    torch.manual_seed(1)
    y1 = layer(x)
    torch.manual_seed(2)
    y2 = layer(x)
    assert not torch.allclose(y1, y2)
    # The base path is untouched by dropout: with B = 0 the output is exactly the base's, even in training.
    with torch.no_grad():
        layer.lora_B.zero_()
    torch.testing.assert_close(layer(x), layer.base_layer(x), atol=0, rtol=0)


class FrozenQuantLike(nn.Module):
    """Stands in for a frozen 4-bit layer: not an nn.Linear, computes its own output, no float weight."""

    def __init__(self, fin: int, fout: int) -> None:
        super().__init__()
        self.in_features, self.out_features = fin, fout
        self.register_buffer("w", torch.randn(fout, fin))

    def forward(self, x):
        return x @ self.w.T


def test_a_non_linear_frozen_base_works_and_merge_needs_dequantising():
    torch.manual_seed(0)
    layer = LoRALinear(FrozenQuantLike(16, 12), r=3, alpha=5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 16)
    expected = x @ layer.base_layer.w.T + layer.scaling * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="[Dd]equantise first"):
        layer.merge()
    assert not layer.merged


def test_bitsandbytes_4bit_base_refuses_to_merge():
    import bitsandbytes as bnb

    base = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    base.load_state_dict(nn.Linear(64, 32, bias=False).state_dict())
    base = base.to("cpu")
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer(torch.randn(2, 64)).shape == (2, 32)
    with pytest.raises(TypeError, match="[Dd]equantise"):
        layer.merge()


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": 0}, ValueError, r"r must be between 1 and 40 for a 40x48 layer, got 0"),
        ({"r": -2}, ValueError, r"r must be between 1 and 40"),
        ({"r": 41}, ValueError, r"r must be between 1 and 40 .* got 41"),
        ({"r": 2.0}, TypeError, r"r must be an int"),
        ({"alpha": 0}, ValueError, r"alpha must be a positive number"),
        ({"alpha": -1.5}, ValueError, r"alpha must be a positive number"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(kwargs, error, match):
    settings = {"r": 4, "alpha": 8, "dropout": 0.0, **kwargs}
    with pytest.raises(error, match=match):
        LoRALinear(nn.Linear(48, 40), **settings)


def test_a_base_that_is_not_linear_is_refused():
    with pytest.raises(TypeError, match="in_features and out_features"):
        LoRALinear(nn.Conv1d(4, 4, 3), r=1, alpha=1)
    with pytest.raises(TypeError, match="base must be"):
        LoRALinear(torch.randn(4, 4), r=1, alpha=1)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "mlp": nn.Sequential(nn.Linear(8, 4))})
        self.norm = nn.LayerNorm(8)


def test_inject_bad_input():
    with pytest.raises(ValueError, match="matches no module.*q_proj"):
        inject_lora(Tiny(), ["nonexistent"], r=2, alpha=4)
    with pytest.raises(TypeError, match=r"'block.mlp', a Sequential, which is not a linear layer"):
        inject_lora(Tiny(), ["mlp"], r=2, alpha=4)
    with pytest.raises(TypeError, match="not a linear layer"):
        inject_lora(Tiny(), ["norm"], r=2, alpha=4)
    with pytest.raises(ValueError, match="non-empty"):
        inject_lora(Tiny(), [], r=2, alpha=4)
    with pytest.raises(ValueError, match=r"r must be between 1 and 8 .*got 9: .*\(layer 'block.q_proj'\)"):
        inject_lora(Tiny(), ["q_proj"], r=9, alpha=4)
    model = Tiny()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="alpha"):
        inject_lora(model, ["q_proj"], r=2, alpha=0)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    inject_lora(model, ["q_proj"], r=2, alpha=4)
    with pytest.raises(ValueError, match="called twice"):
        inject_lora(model, ["q_proj"], r=2, alpha=4)
    with pytest.raises(ValueError, match="called twice"):
        inject_lora(model, ["0"], r=2, alpha=4)


def test_state_dict_round_trip_and_strict_loading(tmp_path):
    model = inject_lora(Tiny(), ["q_proj", "mlp.0"], r=2, alpha=3)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_()
    sd = lora_state_dict(model)
    assert set(sd) == {
        "block.q_proj.lora_A",
        "block.q_proj.lora_B",
        "block.mlp.0.lora_A",
        "block.mlp.0.lora_B",
    }
    other = inject_lora(Tiny(), ["q_proj", "mlp.0"], r=2, alpha=3)
    load_lora_state_dict(other, sd)
    for k, v in lora_state_dict(other).items():
        assert torch.equal(v, sd[k])
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, {k: v for k, v in sd.items() if "mlp" not in k})
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(other, {**sd, "block.q_proj.lora_A": torch.zeros(3, 8)})
    save_peft_adapter(model, tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_peft_adapter(model, tmp_path / "a")


# ------------------------------------------------------------------------------------------------
# On the real SmolLM2


@pytest.fixture(scope="module")
def smollm2(base_model_dir):
    from lora101.models import load_model

    return load_model(precision="fp32", device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("targets", "r"),
    [(["q_proj", "v_proj"], 8), (ATTN, 16), (ALL, 4), ("model\\.layers\\.1\\d\\.mlp\\.down_proj", 32)],
)
def test_trainable_parameter_counts_match_peft_on_smollm2(smollm2, targets, r):
    from peft import LoraConfig, get_peft_model

    ours = count_parameters(inject_lora(copy.deepcopy(smollm2), targets, r=r, alpha=2 * r))
    peft_model = get_peft_model(
        copy.deepcopy(smollm2), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets)
    )
    assert tuple(ours) == peft_model.get_nb_trainable_parameters()
    assert ours.total == 134_515_008 + ours.trainable


@pytest.mark.slow
def test_gradients_only_into_adapters_on_smollm2(smollm2):
    model = inject_lora(copy.deepcopy(smollm2), ATTN, r=4, alpha=8)
    ids = torch.randint(0, 49152, (1, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert len(with_grad) == 2 * 4 * 30


@pytest.mark.slow
def test_peft_export_loads_in_peft_with_the_same_logits(smollm2, tmp_path):
    from peft import PeftModel

    model = inject_lora(copy.deepcopy(smollm2), ["q_proj", "v_proj", "down_proj"], r=4, alpha=12)
    torch.manual_seed(0)
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B.normal_(std=0.02)
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(ids).logits
        base = smollm2(ids).logits
    assert (ours - base).abs().max() > 1e-2  # the adapter matters, so agreement below means something
    folder = save_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path="smollm2-135m-instruct")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"] and config["lora_alpha"] == 12
    loaded = PeftModel.from_pretrained(copy.deepcopy(smollm2), folder)
    with torch.no_grad():
        theirs = loaded(ids).logits
    torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=1e-5)  # 30 layers of float32 rounding
    merged = merge_lora(model, unload=True)
    assert not lora_layers(merged)
    with torch.no_grad():
        # 30 layers of float32 rounding, merged vs unmerged: up to 4.4e-4 measured on logits of size ~20
        torch.testing.assert_close(merged(ids).logits, ours, atol=1e-3, rtol=1e-5)
