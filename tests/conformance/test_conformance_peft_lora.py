"""lora101.lora beside PEFT (0.21) on the grids of PEFT's own LoRA tests (``tests/testing_common.py``,
``test_custom_models.py``): outputs, merge, unmerge, safe merge of a broken adapter, dropout in training and
evaluation, rsLoRA, initialisation, parameter counts, disabling the adapter, and loading an adapter folder that
PEFT trained and saved. Same base weights, same A and B, same inputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_llama import random_llama  # tests/helpers is on sys.path (tests/conftest.py)
from torch import nn

from lora101.lora import (
    LoRALinear,
    count_parameters,
    disable_adapter,
    inject_lora,
    load_peft_adapter,
    lora_layers,
    merge_lora,
)

# (in, out, r, alpha, rslora, bias): square, wide, tall, r = 1, r = min(in, out), alpha != r throughout
LAYERS = [
    (32, 32, 4, 12.0, False, True),
    (48, 20, 8, 3.0, True, True),
    (16, 64, 1, 5.0, False, False),
    (24, 40, 24, 7.0, True, False),
    (64, 8, 8, 32.0, False, True),
]


def _pair(fin, fout, r, alpha, rslora, bias, dropout=0.0, seed=0):
    """Our LoRALinear and PEFT's lora.Linear on copies of one base, with the same non-zero A and B."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(seed)
    base = nn.Linear(fin, fout, bias=bias)
    ours = LoRALinear(copy.deepcopy(base), r=r, alpha=alpha, dropout=dropout, use_rslora=rslora)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, target_modules=["x"])
    theirs = PeftLinear(
        copy.deepcopy(base),
        "default",
        config=cfg,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=rslora,
    )
    with torch.no_grad():
        ours.lora_B.normal_(std=0.3)
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    return ours, theirs


@pytest.mark.parametrize(("fin", "fout", "r", "alpha", "rslora", "bias"), LAYERS)
def test_forward_merge_unmerge_like_peft(fin, fout, r, alpha, rslora, bias):
    """Outputs, scaling (alpha / r or alpha / sqrt(r)), merged weights, merged outputs and the unmerged base."""
    ours, theirs = _pair(fin, fout, r, alpha, rslora, bias)
    assert ours.scaling == pytest.approx(theirs.scaling["default"])
    assert ours.scaling == pytest.approx(alpha / (r**0.5 if rslora else r))
    x = torch.randn(2, 5, fin)
    with torch.no_grad():
        assert not torch.allclose(ours(x), ours.base_layer(x), atol=1e-3)  # the adapter contributes
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        original = ours.base_layer.weight.clone()
        ours.merge()
        theirs.merge()
        torch.testing.assert_close(ours.base_layer.weight, theirs.base_layer.weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
        ours.unmerge()
        theirs.unmerge()
        torch.testing.assert_close(ours.base_layer.weight, original, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.base_layer.weight, theirs.base_layer.weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["lora_A", "lora_B"])
def test_safe_merge_refuses_a_broken_adapter_like_peft(bad, which):
    """PEFT's merge(safe_merge=True) raises on NaN/inf (its default merges silently); ours always refuses,
    leaves the base untouched and unmerged, so the base is never lost."""
    ours, theirs = _pair(32, 24, 4, 8.0, False, True)
    with torch.no_grad():
        getattr(ours, which)[0, 0] = bad
        getattr(theirs, which)["default"].weight[0, 0] = bad
    original = ours.base_layer.weight.clone()
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        theirs.merge(safe_merge=True)
    with pytest.raises(ValueError, match="adapter is broken: .*NaN or infinite"):
        ours.merge()
    assert not ours.merged and torch.equal(ours.base_layer.weight, original)
    with pytest.raises(ValueError, match="adapter is broken"):
        merge_lora(nn.Sequential(ours))


def test_merge_overflow_in_half_precision_is_refused():
    """A finite update that overflows an fp16 base weight when added: refused too (PEFT checks the sum)."""
    base = nn.Linear(8, 8).half()
    with torch.no_grad():
        base.weight.fill_(60000.0)
    layer = LoRALinear(base, r=2, alpha=2)
    with torch.no_grad():
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(10000.0)
    with pytest.raises(ValueError, match="would put NaN/inf into the base weight"):
        layer.merge()
    assert not layer.merged and torch.all(base.weight == 60000.0)


@pytest.mark.parametrize("rslora", [False, True])
def test_dropout_train_and_eval_like_peft(rslora):
    """Dropout on the adapter input only: identical masks from the same seed in training, none in evaluation."""
    ours, theirs = _pair(48, 40, 4, 12.0, rslora, True, dropout=0.3)
    x = torch.randn(16, 48)
    for module in (ours, theirs):
        module.train()
    torch.manual_seed(1)
    y_ours = ours(x)
    torch.manual_seed(1)
    y_theirs = theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-5, rtol=1e-5)
    torch.manual_seed(2)
    assert not torch.allclose(ours(x), y_ours)  # another mask
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), ours(x), atol=0, rtol=0)


@pytest.mark.parametrize(("fin", "r"), [(64, 8), (576, 16), (1536, 4)])
def test_init_like_peft(fin, r):
    """A: Kaiming uniform (a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B zero: a fresh adapter is the base."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(0)
    base = nn.Linear(fin, 32)
    ours = LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r)
    theirs = PeftLinear(
        copy.deepcopy(base), "default", config=LoraConfig(r=r, target_modules=["x"]), r=r, lora_alpha=2 * r
    )
    bound = 1 / fin**0.5
    for a, b in (
        (ours.lora_A, ours.lora_B),
        (theirs.lora_A["default"].weight, theirs.lora_B["default"].weight),
    ):
        assert a.shape == (r, fin) and b.shape == (32, r) and a.dtype == b.dtype == torch.float32
        assert torch.count_nonzero(b) == 0
        assert 0.9 * bound < a.abs().max() <= bound
        assert abs(a.std().item() - bound / 3**0.5) < 0.2 * bound  # the std of U(-bound, bound)
    x = torch.randn(3, fin)
    with torch.no_grad():
        assert torch.equal(ours(x), base(x)) and torch.equal(theirs(x), base(x))


class MLP(nn.Module):
    """PEFT's test_custom_models MLP, in spirit: linear layers under several names, a norm, a non-target head."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.block = nn.ModuleDict({"q_proj": nn.Linear(20, 20, bias=False), "v_proj": nn.Linear(20, 20)})
        self.norm = nn.LayerNorm(20)
        self.lin1 = nn.Linear(20, 2)

    def forward(self, x):
        h = self.relu(self.lin0(x))
        h = self.block["v_proj"](self.block["q_proj"](h))
        return self.lin1(self.norm(h))


TARGETS = [
    (["lin0"], 2),
    (["q_proj", "v_proj"], 8),
    (["lin0", "lin1"], 2),
    ("block\\..*", 4),
    (["q_proj", "v_proj", "lin0", "lin1"], 2),
]


@pytest.mark.parametrize(("targets", "r"), TARGETS)
def test_parameter_counts_and_disable_adapter_like_peft(targets, r):
    """Trainable/total counts equal get_nb_trainable_parameters; with the adapter disabled the model is its base,
    and afterwards it is the adapted model again (PEFT's _test_disable_adapter), merged or not."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = MLP().eval()
    ours = inject_lora(copy.deepcopy(base), targets, r=r, alpha=3 * r)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=3 * r, target_modules=targets))
    assert tuple(count_parameters(ours)) == theirs.get_nb_trainable_parameters()
    for name, layer in lora_layers(ours).items():
        with torch.no_grad():
            layer.lora_B.normal_(std=0.5)
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randn(6, 10)
    with torch.no_grad():
        adapted = ours(x)
        torch.testing.assert_close(adapted, theirs(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(adapted, base(x), atol=1e-4)
        with disable_adapter(ours) as same, theirs.disable_adapter():
            assert same is ours
            torch.testing.assert_close(ours(x), base(x), atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(theirs(x), base(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ours(x), adapted, atol=0, rtol=0)
        merge_lora(ours)
        with disable_adapter(ours):
            torch.testing.assert_close(ours(x), base(x), atol=1e-5, rtol=1e-5)
        assert all(layer.merged for layer in lora_layers(ours).values())
        torch.testing.assert_close(ours(x), adapted, atol=1e-5, rtol=1e-5)


def test_disable_adapter_on_one_layer_restores_state_on_error():
    """The layer's context manager: the base inside, the adapter after, even when the block raises."""
    ours, _ = _pair(16, 12, 2, 4.0, False, True)
    x = torch.randn(3, 16)
    with torch.no_grad():
        adapted = ours(x)
        with pytest.raises(KeyError), ours.disable_adapter():
            assert torch.equal(ours(x), ours.base_layer(x))
            raise KeyError("boom")
        assert not ours.disabled and torch.equal(ours(x), adapted)
    with pytest.raises(ValueError, match="no LoRA layers"), disable_adapter(MLP()):
        pass


# ------------------------------------------------------------------------------------------------
# An adapter folder that PEFT trained and saved, loaded into lora101


def _tiny_llama():
    return random_llama(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )


@pytest.mark.parametrize(
    ("targets", "rslora", "dropout"),
    [(["q_proj", "v_proj"], False, 0.0), ("model\\.layers\\.1\\.mlp\\.(up|down)_proj", True, 0.1)],
)
def test_load_an_adapter_peft_trained_and_saved(tmp_path, targets, rslora, dropout):
    """Train a few steps with PEFT on a tiny Llama, save_pretrained, load the folder into a fresh copy with
    lora101: the same logits (and into a model already injected with the same settings, too)."""
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama()
    config = LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout, use_rslora=rslora, target_modules=targets)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(5):
        loss = peft_model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ours = load_peft_adapter(copy.deepcopy(base), tmp_path / "adapter")
    layers = lora_layers(ours)
    assert len(layers) == (4 if isinstance(targets, list) else 2)
    assert {(m.r, m.alpha, m.use_rslora, m.dropout_p) for m in layers.values()} == {
        (4, 12.0, rslora, dropout)
    }
    with torch.no_grad():
        expected = peft_model(ids).logits
        assert (expected - base(ids).logits).abs().max() > 1e-3  # the trained adapter matters
        torch.testing.assert_close(ours(ids).logits, expected, atol=1e-5, rtol=1e-5)
        again = inject_lora(copy.deepcopy(base), targets, r=4, alpha=12, use_rslora=rslora)
        torch.testing.assert_close(
            load_peft_adapter(again, tmp_path / "adapter")(ids).logits, expected, atol=1e-5, rtol=1e-5
        )


def test_load_peft_adapter_refuses_what_it_cannot_compute(tmp_path):
    """DoRA, a folder that is not an adapter, an adapter for another model, other settings: errors that name
    the file or the setting; the model is left as it was."""
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama()
    with pytest.raises(FileNotFoundError, match="has no adapter_config.json"):
        load_peft_adapter(base, tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_peft_adapter(base, tmp_path / "nowhere")
    get_peft_model(
        copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)
    ).save_pretrained(tmp_path / "dora")
    with pytest.raises(ValueError, match="use_dora=True .*DoRA"):
        load_peft_adapter(base, tmp_path / "dora")
    get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(
        tmp_path / "plain"
    )
    config_file = tmp_path / "plain" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "target_modules": ["k_proj"]}))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_peft_adapter(base, tmp_path / "plain")
    assert not lora_layers(base)  # refused before anything changed
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="r=2, lora_alpha=8"):
        load_peft_adapter(inject_lora(copy.deepcopy(base), ["q_proj"], r=4, alpha=8), tmp_path / "plain")
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_peft_adapter(base, tmp_path / "plain")
