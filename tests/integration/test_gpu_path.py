"""The GPU's code path, tested on the CPU: the compute dtype a GPU gets, and training under bf16 autocast.

On CUDA the Trainer trains under bf16 autocast, and accelerate wraps the model's ``forward`` in autocast
without ever unwrapping it. A model trained that way and the same adapter reloaded then compute in different
precisions, and lesson 5's "identical logits" check fails on every GPU. bf16 autocast runs on a CPU too, so
the wrapper, and ``lora101.finetune``'s removal of it, are tested here without a GPU. The compute dtype is
tested by faking the GPU's compute capability: a T4 (7.5) answers True to ``torch.cuda.is_bf16_supported()``
through emulation, but must compute in fp32.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from code_words import PAIRS
from tiny_llama import tiny_llama  # tests/helpers is on sys.path (tests/conftest.py)

from lora101 import finetune as ft
from lora101 import models

# LORA101_TEST_DEVICE=cuda runs these tests on a GPU; tests/gpu_check.sh runs lesson 5's whole path there
# (tests/gpu/lesson5_path.py: 4-bit load, training under bf16 autocast, reload, merge)
DEVICE = os.environ.get("LORA101_TEST_DEVICE", "cpu")


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of the given compute capability, as far as lora101's dtype choices can tell."""

    def install(capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers

    return install


@pytest.mark.parametrize(
    ("gpu", "capability", "dtype"),
    [
        ("T4", (7, 5), torch.float32),
        ("V100", (7, 0), torch.float32),
        ("A100", (8, 0), torch.bfloat16),
        ("L4", (8, 9), torch.bfloat16),
        ("H100", (9, 0), torch.bfloat16),
    ],
)
def test_bf16_only_where_the_gpu_has_it_natively(fake_gpu, gpu, capability, dtype):
    fake_gpu(capability)
    cuda = torch.device("cuda")
    assert models.compute_dtype_for(cuda) == dtype, gpu
    assert models.bnb_config(models.compute_dtype_for(cuda)).bnb_4bit_compute_dtype == dtype
    assert ft.full_precision_on(cuda, "bf16") == ("bf16" if dtype == torch.bfloat16 else "fp32")
    config = ft.FinetuneConfig(device="cuda")
    assert ft.autocast_dtype(config) == (torch.bfloat16 if dtype == torch.bfloat16 else None)


def test_the_cpu_computes_in_fp32_unless_autocast_is_asked_for():
    cpu = torch.device("cpu")
    assert models.compute_dtype_for(cpu) == torch.float32
    assert ft.full_precision_on(cpu, "bf16") == "fp32"
    assert ft.autocast_dtype(ft.FinetuneConfig(device="cpu")) is None
    assert ft.autocast_dtype(ft.FinetuneConfig(device="cpu", mixed_precision="bf16")) == torch.bfloat16
    with pytest.raises(ValueError, match="mixed_precision"):
        ft.FinetuneConfig(mixed_precision="fp8")


def test_training_arguments_use_the_checkpointing_name_this_transformers_knows():
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    on = ft.checkpointing_arguments(True)
    (flag,) = [k for k in on if not k.endswith("_kwargs")]
    assert flag in names and on[flag] is True and on[f"{flag}_kwargs"] == {"use_reentrant": False}
    if "activation_checkpointing" in names:  # transformers 5.23+: the old name is deprecated
        assert flag == "activation_checkpointing"


def _tiny_llama():
    model, tokenizer = tiny_llama()
    return model.to(DEVICE), tokenizer


def _train_under_bf16_autocast(tmp_path):
    """A tiny Llama + LoRA trained 3 steps with the GPU's mixed-precision switch on; returns the trained model,
    the adapter reloaded onto an untouched copy of the base, and a probe batch."""
    from datasets import Dataset
    from peft import PeftModel

    from lora101.data import tokenize_example
    from lora101.tasks.contracts import build_messages

    base, tokenizer = _tiny_llama()
    pristine = copy.deepcopy(base)
    rows = [tokenize_example(tokenizer, build_messages(prompt), answer) for prompt, answer in PAIRS[:4]]
    dataset = Dataset.from_list(rows)
    config = ft.FinetuneConfig(
        rank=4,
        alpha=8,
        steps=3,
        batch_size=2,
        lr=1e-2,
        warmup_steps=1,
        save_steps=100,
        logging_steps=1,
        device=DEVICE,
        mixed_precision="bf16",
    )
    model = ft.add_lora(base, config.rank, config.alpha)
    args = ft.training_arguments(config, tmp_path / "run")
    assert args.bf16, "mixed_precision='bf16' must switch on the Trainer's bf16 autocast, as on a GPU"
    ft.train(model, tokenizer, dataset, config, tmp_path / "run", progress=False)
    ft.save_adapter(model, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(pristine, str(tmp_path / "adapter")).eval()
    probe = {k: v.to(DEVICE) for k, v in ft.collator(tokenizer)(rows).items()}
    return model, reloaded, probe


def _logits(model, probe):
    with torch.no_grad():
        return model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits


@pytest.mark.slow
def test_a_model_trained_under_autocast_matches_its_reloaded_adapter(tmp_path):
    model, reloaded, probe = _train_under_bf16_autocast(tmp_path)
    assert "_original_forward" not in model.__dict__, (
        "training left accelerate's autocast wrapper on the model"
    )
    assert torch.equal(_logits(model, probe), _logits(reloaded, probe))


@pytest.mark.slow
def test_without_unwrapping_the_trained_model_computes_in_autocast(tmp_path, monkeypatch):
    """The failure the unwrapping prevents, shown: left wrapped, the trained model's logits are bf16-rounded."""
    from lora101.finetune import training  # where train() looks the function up

    monkeypatch.setattr(training, "drop_autocast_wrapper", lambda model: False)
    model, reloaded, probe = _train_under_bf16_autocast(tmp_path)
    assert "_original_forward" in model.__dict__, "accelerate no longer wraps forward: this test is obsolete"
    wrapped, plain = _logits(model, probe), _logits(reloaded, probe)
    assert not torch.equal(wrapped, plain)
    monkeypatch.undo()
    assert ft.drop_autocast_wrapper(model) is True
    assert torch.equal(_logits(model, probe), plain)
