"""lora101.memory: shapes and counts against real models, predictions against what PyTorch allocates."""

from __future__ import annotations

import pytest
import torch
from tiny_llama import random_llama  # tests/helpers is on sys.path (tests/conftest.py)

import lora101  # noqa: F401
from lora101.lora import count_parameters, inject_lora
from lora101.memory import (
    NF4_BITS,
    PRESETS,
    ModelShape,
    activation_elements,
    estimate_memory,
    lora_parameter_count,
    measure_activation_memory,
    measure_training_memory,
)


def _tiny_llama(seed: int = 0):
    """A small random Llama (same code path as SmolLM2, seconds to train a step), in training mode."""
    return random_llama(
        seed,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=500,
        tie_word_embeddings=True,
        head_dim=16,
    ).train()


def test_presets_have_the_published_parameter_counts():
    # The model cards' totals: Llama-2 7B/13B/70B and Llama-3 8B.
    assert PRESETS["Llama-2-7B"].n_params == 6_738_415_616
    assert PRESETS["Llama-2-13B"].n_params == 13_015_864_320
    assert PRESETS["Llama-2-70B"].n_params == 68_976_648_192
    assert PRESETS["Llama-3-8B"].n_params == 8_030_261_248
    approx = ModelShape.from_param_count(7e9)
    assert abs(approx.n_params - 7e9) / 7e9 < 0.05


@pytest.mark.slow
def test_shape_and_lora_counts_match_the_real_smollm2(base_model_dir):
    from lora101.models import load_model

    model = load_model(precision="fp32", device="cpu")
    shape = ModelShape.from_config(model.config)
    assert shape.n_params == PRESETS["SmolLM2-135M"].n_params
    assert shape.n_params == sum(p.numel() for p in model.parameters()) == 134_515_008
    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    inject_lora(model, all_linear, r=8, alpha=16)
    assert count_parameters(model).trainable == lora_parameter_count(shape, 8, "all-linear") == 2_442_240


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd-momentum"])
def test_prediction_matches_what_pytorch_allocates_after_a_real_step(method, optimizer):
    model = _tiny_llama()
    if method == "lora":
        inject_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.AdamW(params, lr=1e-3)
        if optimizer == "adamw"
        else torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    )
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    measured = measure_training_memory(model, opt)
    predicted = estimate_memory(model, method, precision="fp32", optimizer=optimizer, r=4, activations=False)
    assert measured["gradients"] == predicted.gradients
    assert measured["weights"] == pytest.approx(predicted.weights, rel=1e-3)  # + rotary buffers
    # AdamW also keeps a one-element float32 "step" counter per parameter tensor: 4 bytes each.
    steps = 4 * len(params) if optimizer == "adamw" else 0
    assert measured["optimizer"] == predicted.optimizer + steps


@pytest.mark.parametrize("method", ["full", "lora"])
def test_activation_formula_is_close_to_the_tensors_saved_for_backward(method):
    model = _tiny_llama()
    if method == "lora":
        inject_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8)
    ids = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    measured = measure_activation_memory(model, {"input_ids": ids, "labels": ids})
    blocks, head = activation_elements(model, 2, 32, method=method)
    assert measured == pytest.approx(4 * (blocks + head), rel=0.10)


def test_the_seed_arithmetic_and_qlora_bits():
    b = estimate_memory("Llama-3-8B", "full", precision="fp16", optimizer="adamw", activations=False)
    # Seed 001: 16 GB fp16 weights + 64 GB Adam states + 16 GB gradients = 96 GB for "8B".
    assert round(b.weights / 1e9) == 16 and round(b.optimizer / 1e9) == 64 and round(b.gradients / 1e9) == 16
    assert round(b.total / 1e9) == 96
    assert NF4_BITS == pytest.approx(4.127, abs=1e-3)
    lora = lora_parameter_count("Llama-2-7B", 8, "all-linear")
    assert lora == 19_988_480  # about 40 MB in 16-bit: not seed 001's "2 GB adapter (r=8, all layers)"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "prefix"}, "method must be one of"),
        ({"precision": "int3"}, "precision must be one of"),
        ({"optimizer": "lion"}, "optimizer must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"method": "lora", "target_modules": ["qproj"]}, "target_modules"),
        ({"method": "lora", "r": 0}, "r must be a positive int"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_memory("Llama-2-7B", **kwargs)
    with pytest.raises(ValueError, match="not a preset"):
        estimate_memory("Llama-9-7B")
    with pytest.raises(TypeError, match="model must be"):
        estimate_memory([1, 2])


def test_optimizer_state_dtype_defaults_to_fp32_and_follows_the_parameters_when_asked():
    settings = dict(
        batch_size=2, seq_len=2048, gradient_checkpointing=True, r=16, target_modules="all-linear"
    )
    for method in ("full", "lora", "qlora"):
        default = estimate_memory("Llama-3-8B", method, **settings)
        assert estimate_memory("Llama-3-8B", method, optimizer_state_dtype="fp32", **settings) == default
    n = PRESETS["Llama-3-8B"].n_params
    full_bf16 = estimate_memory("Llama-3-8B", "full", optimizer_state_dtype="param", **settings)
    assert full_bf16.optimizer == 4 * n  # two bf16 moments, what torch.optim.AdamW keeps for bf16 weights
    assert estimate_memory("Llama-3-8B", "full", **settings).optimizer == 8 * n
    # LoRA adapters are fp32: "param" is fp32 there, so their states do not change
    lora = estimate_memory("Llama-3-8B", "lora", **settings)
    assert estimate_memory("Llama-3-8B", "lora", optimizer_state_dtype="param", **settings) == lora
    # fixed-format optimizers ignore it; SGD with momentum keeps one state
    assert (
        estimate_memory("Llama-3-8B", "full", optimizer="adamw-8bit", optimizer_state_dtype="bf16").optimizer
        == 2 * n
    )
    assert (
        estimate_memory(
            "Llama-3-8B", "full", optimizer="sgd-momentum", optimizer_state_dtype="bf16"
        ).optimizer
        == 2 * n
    )
    with pytest.raises(ValueError, match="optimizer_state_dtype must be one of"):
        estimate_memory("Llama-3-8B", optimizer_state_dtype="int8")


@pytest.mark.parametrize("state_dtype", ["param", "bf16"])
def test_bf16_full_fine_tuning_keeps_bf16_adam_states_as_predicted(state_dtype):
    model = _tiny_llama().to(torch.bfloat16)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    measured = measure_training_memory(model, opt)
    predicted = estimate_memory(
        model, "full", precision="bf16", optimizer_state_dtype=state_dtype, activations=False
    )
    assert measured["optimizer"] == predicted.optimizer + 4 * len(params)  # + AdamW's fp32 step counters
    assert measured["optimizer"] != estimate_memory(
        model, "full", precision="bf16", activations=False
    ).optimizer + 4 * len(params)


def _stored_gpu_scale_rows() -> list[dict]:
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "lessons" / "results" / "gpu"
    rows = []
    for path in sorted(folder.glob("scale*.json*")):
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for line in filter(str.strip, lines):
            doc = json.loads(line)
            # a bench scale results file (settings beside its runs), or one row of tests/gpu_check.sh's scale.jsonl
            rows += [{"settings": doc.get("settings"), **run} for run in doc.get("runs", [doc])]
    return [r for r in rows if str(r.get("device", "")).startswith("cuda") and r.get("peak_bytes")]


def test_the_gpu_prediction_is_within_ten_percent_of_the_measured_cuda_peak():
    """Once tests/gpu_check.sh's rows are stored: lesson 1's prediction, with the optimizer states in the
    trainable parameters' dtype (bf16 AdamW moments for a bf16 model), against torch.cuda.max_memory_allocated."""
    from transformers import LlamaConfig

    from lora101.bench import scale

    rows = _stored_gpu_scale_rows()
    if not rows:
        pytest.skip("no GPU run stored under lessons/results/gpu/ yet")
    for row in rows:
        config = LlamaConfig(**scale.SIZES[row["size"]])
        settings = row["settings"]
        predicted = estimate_memory(
            config,
            row["method"],
            precision="bf16" if row["dtype"] == "bfloat16" else "fp32",
            r=scale.RANK,
            target_modules="all-linear",
            batch_size=settings["batch_size"],
            seq_len=settings["seq_len"],
            gradient_checkpointing=settings["checkpointing"],
            optimizer_state_dtype="param",
        )
        assert predicted.total == pytest.approx(row["peak_bytes"], rel=0.10), (row["size"], row["method"])
