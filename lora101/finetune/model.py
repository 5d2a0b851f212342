"""The model of a fine-tune: the base (4-bit NF4 or full precision), its LoRA adapters, and what is saved.

peft, transformers and bitsandbytes are imported inside the functions that use them: importing them takes
seconds, and the command line imports this package for every command, ``lora101 --help`` included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lora101.models import DEFAULT_MODEL, choose_device, has_native_bf16, load_model
from lora101.targets import ALL_LINEAR, parse_targets

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def load_base(
    model: str = DEFAULT_MODEL, precision: str = "nf4", device: str | None = None, *, prepare: bool = True
):
    """The base model ready for adapter training.

    ``precision="nf4"``: 4-bit NF4 + double quantisation, computing in fp32 on the CPU and bf16 on
    Ampere+ GPUs, then ``prepare_model_for_kbit_training`` (with gradient checkpointing only on CUDA:
    on a CPU it would only recompute activations that fit in RAM anyway). ``"bf16"``/``"fp32"``: the
    full-precision base, frozen. "bf16" is loaded in bf16 only where the device has native bf16
    (Ampere+ GPUs) and in fp32 elsewhere (CPUs, T4, V100), which run bf16 matmuls slowly or not at all:
    the memory difference is then what 4-bit storage saves over 16/32-bit storage.
    """
    from peft import prepare_model_for_kbit_training

    dev = choose_device(device)
    if precision == "nf4":
        base = load_model(model, precision="nf4", device=dev)
        keep_cpu_weights_unpacked(base)
        if prepare:
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=dev.type == "cuda")
    else:
        base = load_model(model, precision=full_precision_on(dev, precision), device=dev)
        for p in base.parameters():
            p.requires_grad_(False)
        if dev.type == "cuda":
            enable_checkpointing(base)
            base.enable_input_require_grads()
    return base


def full_precision_on(device: torch.device, precision: str) -> str:
    """What a "bf16"/"fp32" base is loaded as on ``device``: bf16 only with native bf16, else fp32."""
    return "bf16" if precision == "bf16" and has_native_bf16(device) else "fp32"


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass instead of storing them (non-reentrant).

    transformers 5.23 renamed gradient checkpointing to activation checkpointing and deprecates the old
    names; Colab's transformers (5.15) has only the old ones.
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def keep_cpu_weights_unpacked(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel; returns how many layers.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, rewrites a ``Linear4bit`` weight into another
    layout the first time the layer runs in eval mode without gradients (an evaluation before
    training does exactly that). From then on every matmul, training ones included, takes that
    kernel's path, and saving a state dict converts the weight back: measured here, a model
    evaluated, trained, and then reloaded from its saved adapter disagreed by up to 0.5 in its
    logits. Keeping the standard layout makes evaluation, training and reloading use one code path.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def lora_config(
    rank: int = 16, alpha: int = 32, targets: str | Sequence[str] = "all-linear", dropout: float = 0.0
):
    """PEFT's ``LoraConfig`` for a causal LM: delta W = B @ A * alpha / rank on each target module."""
    from peft import LoraConfig

    # PEFT knows "all-linear" itself (and keeps the word in adapter_config.json); other specs become names.
    targets = ALL_LINEAR if targets == ALL_LINEAR else list(parse_targets(targets, "targets"))
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def add_lora(
    base, rank: int = 16, alpha: int = 32, targets: str | Sequence[str] = "all-linear", dropout: float = 0.0
):
    """Wrap ``base`` with fresh LoRA adapters (B = 0, so the model's outputs are unchanged at first)."""
    from peft import get_peft_model

    return get_peft_model(base, lora_config(rank, alpha, targets, dropout))


# ------------------------------------------------------------------------------------------------
# Saving, reloading, merging


def has_adapter(folder: str | os.PathLike) -> bool:
    """True when ``folder`` already holds a PEFT adapter (so writing one there would overwrite it)."""
    return (Path(folder) / ADAPTER_FILES[0]).is_file()


def save_adapter(model, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save only the adapter (PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors``).

    Refuses to replace an adapter already in ``folder`` unless ``overwrite=True``: a learner's
    trained adapter is never lost to a second run.
    """
    folder = Path(folder)
    if has_adapter(folder) and not overwrite:
        raise FileExistsError(
            f"{folder} already holds an adapter; choose another folder or pass overwrite=True"
        )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    return folder


def load_adapter(folder: str | os.PathLike, model: str = DEFAULT_MODEL, precision: str = "nf4", device=None):
    """A fresh base (``precision``) with the saved adapter in ``folder`` attached, in eval mode."""
    from peft import PeftModel

    if not has_adapter(folder):
        raise FileNotFoundError(f"{folder} holds no adapter ({ADAPTER_FILES[0]} is missing)")
    # prepared exactly as for training: prepare_model_for_kbit_training casts the bf16 embeddings and
    # norms to fp32, and the adapter was trained against those fp32 copies; without it logits differ.
    base = load_base(model, precision, device, prepare=True)
    return PeftModel.from_pretrained(base, str(folder)).eval()


def merge_adapter(
    folder: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    dtype: str = "fp32",
    device=None,
    *,
    base: str = "dequantized",
):
    """A full-precision copy of the base with the adapter in ``folder`` folded into its weights.

    ``base="dequantized"`` (default) starts from the NF4 weights de-quantised back to ``dtype``:
    exactly the weights the adapter was trained against, so the merged model reproduces the
    4-bit + adapter model up to float rounding (one matmul with W + s*B@A instead of W@x + s*B@(A@x)).
    ``base="original"`` starts from the original 16-bit weights, which the 4-bit model never saw:
    its outputs differ by the NF4 quantisation error. Merging into the 4-bit weights themselves is
    not offered: re-quantising W + s*B@A would round most of the small update away.
    ``dtype``: "fp32" (the CPU default: CPUs have no fast bf16 matmul and fp32 keeps the comparison
    tight) or "bf16" (half the size on disk; rounding the merged weights to 8 mantissa bits).
    """
    from peft import PeftModel

    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be 'fp32' or 'bf16', got {dtype!r}")
    if base not in ("dequantized", "original"):
        raise ValueError(f"base must be 'dequantized' or 'original', got {base!r}")
    full = dequantized_base(model, device) if base == "dequantized" else load_model(model, "fp32", device)
    if dtype == "bf16":
        full = full.to(torch.bfloat16)
    return PeftModel.from_pretrained(full, str(folder)).merge_and_unload().eval()


def dequantized_base(model: str = DEFAULT_MODEL, device=None):
    """The NF4 base de-quantised to fp32: a plain model holding exactly the weights the 4-bit model uses.

    Returns a transformers model whose every 4-bit ``Linear4bit`` weight (out, in) is replaced by
    ``bitsandbytes.functional.dequantize_4bit`` of it; embeddings and norms are the base's own.
    """
    import bitsandbytes as bnb

    q = load_model(model, precision="nf4", device=device)
    full = load_model(model, precision="fp32", device=device)
    q_modules = dict(q.named_modules())
    with torch.no_grad():
        for name, module in full.named_modules():
            qm = q_modules.get(name)
            if isinstance(qm, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(qm.weight.data, qm.weight.quant_state)
                module.weight.copy_(w.to(module.weight.dtype))
    del q
    return full.eval()


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files in ``folder`` (recursively), in bytes."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
