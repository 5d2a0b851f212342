"""Lesson 5 on a GPU: which base model to fine-tune, chosen by lesson 1's memory predictor.

On a CPU lesson 5 trains the bundled SmolLM2-135M-Instruct. On a GPU it can do what QLoRA is for: fine-tune a
model of a few billion parameters in 4 bits. :func:`choose_model` picks the largest model of a short list
(:data:`CANDIDATES`) whose QLoRA run, as :func:`lora101.memory.estimate_memory` predicts it for lesson 5's
settings (:data:`LESSON5`), fits in the GPU's memory with room for the CUDA context. The candidates' configs
(shapes only, from the models' published ``config.json``) ship in ``lora101/model_configs/``, so the choice
needs no model hub; the weights come from the hub when the lesson loads the chosen model.

Models whose hub page asks for a licence to be accepted before downloading (Meta's Llama 3.2) are left out
unless ``allow_gated=True``: a learner would need a hub account and token first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lora101.memory import BYTES, ModelShape, estimate_memory
from lora101.models import has_native_bf16

__all__ = [
    "CANDIDATES",
    "LESSON5",
    "Candidate",
    "Choice",
    "load_config",
    "predict_bytes",
    "choose_model",
    "gpu_memory",
]

CONFIGS = Path(__file__).resolve().parent / "model_configs"


@dataclass(frozen=True)
class Candidate:
    """A base model lesson 5 may fine-tune on a GPU: its config file's name, its hub id, whether it is gated."""

    name: str
    hub_id: str
    gated: bool = False


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct"),
    Candidate("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
    Candidate("Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct"),
    Candidate("Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", gated=True),
    Candidate("Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", gated=True),
)

# Lesson 5's GPU job (lora101.finetune on CUDA): LoRA r=16 on every linear layer, batches of 16 examples of at
# most 192 tokens (lora101.tasks.contracts.build_dataset's max_length), paged 8-bit AdamW, gradient checkpointing.
LESSON5 = dict(
    r=16,
    target_modules="all-linear",
    batch_size=16,
    seq_len=192,
    optimizer="adamw-8bit",
    gradient_checkpointing=True,
)
CUDA_OVERHEAD = 2**30  # the CUDA context and the allocator's slack, which the prediction leaves out
USABLE = 0.9  # of the GPU's memory: the prediction is an estimate, not a bound


def load_config(name: str, **overrides):
    """The transformers config of candidate ``name`` (from ``lora101/model_configs/NAME.json``), with any
    ``overrides`` (e.g. ``num_hidden_layers=2`` for a model of the same widths with fewer blocks)."""
    from transformers import AutoConfig

    path = CONFIGS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(c.name for c in CANDIDATES)
        raise ValueError(f"name: no bundled config for {name!r}; bundled: {known}")
    fields = json.loads(path.read_text())
    return AutoConfig.for_model(fields.pop("model_type"), **{**fields, **overrides})


def predict_bytes(name: str, native_bf16: bool, **settings) -> float:
    """Lesson 1's prediction of ``name``'s QLoRA run with lesson 5's settings (``settings`` override them).

    The weights left in 16-bit (embeddings, norms, output layer) are counted in fp32, since
    ``prepare_model_for_kbit_training`` casts them; activations in bf16 where the GPU has native bf16
    (compute capability 8.0+), else fp32, as lesson 5 computes.
    """
    shape = ModelShape.from_config(load_config(name), name)
    precision = "bf16" if native_bf16 else "fp32"
    budget = estimate_memory(shape, "qlora", precision=precision, **{**LESSON5, **settings})
    upcast = (shape.n_params - shape.linear_params) * (4 - BYTES[precision])
    return budget.total + upcast


@dataclass(frozen=True)
class Choice:
    """The chosen candidate (None when none fits), what was predicted, and every candidate's row."""

    candidate: Candidate | None
    predicted_bytes: float
    budget_bytes: float
    rows: list[dict]

    def table(self) -> str:
        lines = [f"{'model':<24} {'params':>7} {'predicted GB':>13}  fits {self.budget_bytes / 1e9:.1f} GB"]
        for r in self.rows:
            note = " (gated: left out)" if r["left_out"] else ""
            lines.append(
                f"{r['name']:<24} {r['params'] / 1e9:>6.2f}B {r['predicted_bytes'] / 1e9:>13.1f}  "
                f"{'yes' if r['fits'] else 'no'}{note}"
            )
        return "\n".join(lines)


def choose_model(memory_bytes: float, native_bf16: bool, *, allow_gated: bool = False, **settings) -> Choice:
    """The largest candidate (by parameters) whose predicted QLoRA run fits ``memory_bytes`` of GPU memory.

    Fits: prediction + 1 GiB (CUDA context) within 90% of the memory. ``native_bf16``: compute capability
    8.0+ (A100, L4, H100), False on a T4 or V100. Returns a :class:`Choice` whose ``candidate`` is None when
    nothing fits (lesson 5 then keeps the bundled 135M model).
    """
    if not memory_bytes or memory_bytes <= 0:
        raise ValueError(f"memory_bytes must be a positive number of bytes, got {memory_bytes!r}")
    budget = USABLE * memory_bytes - CUDA_OVERHEAD
    rows = []
    for c in CANDIDATES:
        predicted = predict_bytes(c.name, native_bf16, **settings)
        params = ModelShape.from_config(load_config(c.name)).n_params
        row = dict(name=c.name, hub_id=c.hub_id, params=params, predicted_bytes=predicted)
        rows.append({**row, "fits": predicted <= budget, "left_out": c.gated and not allow_gated})
    eligible = [r for r in rows if r["fits"] and not r["left_out"]]
    best = max(eligible, key=lambda r: r["params"], default=None)
    candidate = next((c for c in CANDIDATES if best and c.name == best["name"]), None)
    return Choice(candidate, best["predicted_bytes"] if best else 0.0, budget, rows)


def gpu_memory(device=None) -> tuple[int, bool] | None:
    """(total memory in bytes, native bf16) of the CUDA GPU ``device`` (default: the current one), or None."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device if device is not None else "cuda")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).total_memory, has_native_bf16(torch.device("cuda", index))
