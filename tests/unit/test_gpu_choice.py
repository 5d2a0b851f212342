"""lora101.gpu_choice: lesson 5's model on a GPU, chosen by lesson 1's predictor, tested without a GPU.

The GPU's memory and compute capability are faked (a T4, an L4, an A100/H100); the chosen model's branch is
run on the CPU with random weights of its real shape, built from the bundled config.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lora101 import gpu_choice
from lora101.memory import ModelShape

# The model cards' totals (Qwen2.5's q/k/v biases, 0.2-0.3M, are not counted by ModelShape).
PUBLISHED = {
    "SmolLM2-1.7B-Instruct": 1.71e9,
    "Qwen2.5-1.5B-Instruct": 1.54e9,
    "Qwen2.5-3B-Instruct": 3.09e9,
    "Llama-3.2-1B-Instruct": 1_235_814_400,
    "Llama-3.2-3B-Instruct": 3_212_749_824,
}


def test_every_candidate_has_a_bundled_config_of_its_published_size():
    assert {c.name for c in gpu_choice.CANDIDATES} == set(PUBLISHED)
    for c in gpu_choice.CANDIDATES:
        n = ModelShape.from_config(gpu_choice.load_config(c.name)).n_params
        assert n == pytest.approx(PUBLISHED[c.name], rel=0.005), c.name
        assert c.gated == c.hub_id.startswith("meta-llama/")
    with pytest.raises(ValueError, match="name: no bundled config"):
        gpu_choice.load_config("Llama-9-70B")


@pytest.mark.parametrize(
    ("gpu", "memory", "native_bf16"),
    [("T4", 15e9, False), ("L4", 22e9, True), ("A100 40GB", 40e9, True), ("A100/H100 80GB", 80e9, True)],
)
def test_the_largest_ungated_model_that_fits(gpu, memory, native_bf16):
    choice = gpu_choice.choose_model(memory, native_bf16)
    assert choice.candidate.name == "Qwen2.5-3B-Instruct", gpu
    assert choice.predicted_bytes <= choice.budget_bytes == 0.9 * memory - 2**30
    # every candidate fits these GPUs: the choice is the largest one a learner can download without a token
    assert all(r["fits"] for r in choice.rows)
    gated = gpu_choice.choose_model(memory, native_bf16, allow_gated=True)
    assert gated.candidate.name == "Llama-3.2-3B-Instruct"
    assert "Qwen2.5-3B-Instruct" in choice.table() and "gated: left out" in choice.table()


def test_a_small_gpu_gets_a_smaller_model_or_none():
    assert gpu_choice.choose_model(6e9, False).candidate.name == "SmolLM2-1.7B-Instruct"
    nothing = gpu_choice.choose_model(3e9, True)
    assert nothing.candidate is None and not any(r["fits"] for r in nothing.rows)
    with pytest.raises(ValueError, match="memory_bytes"):
        gpu_choice.choose_model(0, True)


def test_the_prediction_follows_the_gpu_dtype_and_the_lesson_settings():
    # a 3B model's QLoRA run at lesson 5's settings on a T4 (fp32 compute): about 6.5 GB
    t4 = gpu_choice.predict_bytes("Qwen2.5-3B-Instruct", native_bf16=False)
    assert 6.0e9 < t4 < 7.0e9
    assert gpu_choice.predict_bytes("Qwen2.5-3B-Instruct", native_bf16=True) < t4  # bf16 activations
    longer = gpu_choice.predict_bytes("Qwen2.5-3B-Instruct", native_bf16=False, seq_len=384)
    assert longer > t4


@pytest.mark.parametrize(
    ("capability", "memory", "want"), [((7, 5), 15e9, False), ((8, 9), 22e9, True), ((9, 0), 80e9, True)]
)
def test_the_gpu_is_read_from_torch(monkeypatch, capability, memory, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=int(memory))
    )
    assert gpu_choice.gpu_memory() == (int(memory), want)


def test_no_gpu_no_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_choice.gpu_memory() is None


@pytest.mark.slow
def test_the_chosen_model_trains_with_random_weights_of_its_real_shape(tmp_path, base_model_dir):
    """The T4's choice, built from its bundled config with random weights (two of its blocks, to fit a CPU
    test: every layer keeps its real width, heads and vocabulary), loaded in 4-bit and trained two steps."""
    from transformers import AutoModelForCausalLM

    from lora101 import finetune as ft
    from lora101.models import load_tokenizer
    from lora101.tasks.contracts import build_dataset

    name = gpu_choice.choose_model(15e9, False).candidate.name
    config = gpu_choice.load_config(name, num_hidden_layers=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(tmp_path / "model")
    model = ft.add_lora(ft.load_base(str(tmp_path / "model"), precision="nf4", device="cpu"), rank=4, alpha=8)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert (
        q_proj.base_layer.in_features == config.hidden_size and model.config.vocab_size == config.vocab_size
    )
    # token ids from the bundled tokenizer (no hub here): all below the chosen model's vocabulary
    tokenizer = load_tokenizer()
    data = build_dataset(tokenizer, n_train=4, n_test=1)["train"]
    settings = dict(
        steps=2, batch_size=2, lr=1e-2, warmup_steps=1, save_steps=2, logging_steps=1, device="cpu"
    )
    result = ft.train(model, tokenizer, data, ft.FinetuneConfig(**settings), tmp_path / "run", progress=False)
    assert result.global_step == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(float(p.abs().max()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
