"""The real QLoRA fine-tune: a 4-bit base, LoRA adapters, training, saving, reloading, merging.

The recipe (Dettmers et al., 2023) in the order the lesson builds it:

1. :func:`load_base` - the base model in 4-bit NF4 with double quantisation (``precision="nf4"``),
   or in bf16 for plain LoRA; then PEFT's ``prepare_model_for_kbit_training``, which freezes the base,
   casts the non-quantised weights (embeddings, norms) to fp32 and, on CUDA, turns on gradient
   checkpointing.
2. :func:`add_lora` - PEFT ``LoraConfig`` adapters on the target modules (``"all-linear"`` by default).
3. :func:`train` - the transformers ``Trainer`` with a tqdm progress bar, checkpoints every
   ``save_steps``, a paged 8-bit AdamW and gradient checkpointing on CUDA (plain AdamW on the CPU,
   where neither exists or helps), resumable from the last checkpoint; vocabulary logits computed
   only at the positions the loss reads (:func:`training_collator`, :func:`answer_loss`).
4. :func:`save_adapter` / :func:`load_adapter` - PEFT's format; :func:`merge_adapter` folds the adapter
   into a de-quantised copy of the base.

Everything here runs the same on the CPU and on CUDA; only the step budget and the compute dtype
change (fp32 on CPUs and pre-Ampere GPUs, which have no native bf16 matmul; bf16 autocast on Ampere+ GPUs,
which the CPU can run too: ``FinetuneConfig(mixed_precision="bf16")`` takes the GPU's code path there).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora101.lora import count_parameters as count_parameters  # ft.count_parameters, as lesson 5 calls it
from lora101.models import DEFAULT_MODEL, choose_device, has_native_bf16, load_model
from lora101.targets import ALL_LINEAR, parse_targets

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MIXED_PRECISIONS = ("auto", "bf16", "no")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run depends on; plain values with defaults that work on a laptop CPU."""

    model: str = DEFAULT_MODEL
    precision: str = "nf4"  # "nf4" (QLoRA) or "bf16"/"fp32" (plain LoRA on a full-precision base)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: str | list[str] = "all-linear"
    steps: int = 50  # lesson 5's CPU budget (a GPU's full-size job takes 400)
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 10
    seed: int = 0
    save_steps: int = 40
    logging_steps: int = 5
    max_grad_norm: float = 1.0
    device: str | None = None
    # "auto": bf16 autocast where the GPU has native bf16 (compute capability 8.0+), none elsewhere;
    # "bf16" forces it (a CPU runs it too: how the tests take the GPU's code path), "no" turns it off.
    mixed_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("nf4", "bf16", "fp32"):
            raise ValueError(f"precision must be 'nf4', 'bf16' or 'fp32', got {self.precision!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}"
            )
        for name in ("rank", "alpha", "steps", "batch_size", "save_steps", "logging_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be between 0 and 1, got {self.lr!r}")
        if not (0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def for_steps(cls, steps: int, **settings: Any) -> FinetuneConfig:
        """A config whose schedule follows ``steps`` (what ``lora101 finetune`` runs): a warm-up of a tenth
        of the steps, the loss logged every quarter of them (at most every 5 steps, for a readable curve),
        and a checkpoint at least at the last step (``save_steps`` no later than ``steps``)."""
        save_steps = min(settings.pop("save_steps", cls.save_steps), steps)
        warmup_steps = max(1, steps // 10)
        logging_steps = max(1, min(5, steps // 4))
        return cls(
            steps=steps,
            save_steps=save_steps,
            warmup_steps=warmup_steps,
            logging_steps=logging_steps,
            **settings,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# The model


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
# Training


class _LossRecorder:
    """A ``TrainerCallback`` that keeps (step, loss) pairs and the tokens seen, for plots and reports."""

    def __new__(cls, *args, **kwargs):  # built lazily so that importing this module stays cheap
        from transformers import TrainerCallback

        class LossRecorder(TrainerCallback):
            def __init__(self) -> None:
                self.steps: list[int] = []
                self.losses: list[float] = []
                self.first_step = 0  # where this call started: after a checkpoint's step when resuming

            def on_train_begin(self, args, state, control, **kwargs):
                self.first_step = state.global_step

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.steps.append(state.global_step)
                    self.losses.append(float(logs["loss"]))

        return LossRecorder()


def live_loss_plot(total_steps: int):
    """A ``TrainerCallback`` that redraws the loss curve in a notebook each time the Trainer logs."""
    from transformers import TrainerCallback

    from lora101.plots import figure_image, loss_curve

    class LiveLossPlot(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.losses: list[float] = []
            self.handle = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            from IPython.display import display

            self.steps.append(state.global_step)
            self.losses.append(float(logs["loss"]))
            # One PNG, updated in place: the same output whatever matplotlib backend the kernel runs.
            image = figure_image(loss_curve(self.steps, self.losses, total_steps=total_steps))
            if self.handle is None:
                self.handle = display(image, display_id=True)
            else:
                self.handle.update(image)

    return LiveLossPlot()


def autocast_dtype(config: FinetuneConfig) -> torch.dtype | None:
    """The dtype the ``Trainer`` autocasts to for ``config``: bf16, or None for no autocast."""
    if config.mixed_precision == "bf16":
        return torch.bfloat16
    if config.mixed_precision == "auto" and has_native_bf16(choose_device(config.device)):
        return torch.bfloat16
    return None


def checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """TrainingArguments' checkpointing switches under the name this transformers knows (see enable_checkpointing)."""
    import dataclasses

    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def training_arguments(config: FinetuneConfig, output_dir: str | os.PathLike, *, progress: bool = True):
    """transformers ``TrainingArguments`` for ``config``: cosine schedule with warmup, checkpoints,
    and on CUDA the QLoRA memory savers (paged 8-bit AdamW, gradient checkpointing), bf16 autocast
    where :func:`autocast_dtype` says so."""
    from transformers import TrainingArguments

    from lora101 import distributed

    dev = choose_device(config.device)
    cuda = dev.type == "cuda"
    return TrainingArguments(
        output_dir=str(output_dir),
        # config.batch_size is the global batch: under torchrun each process takes its share of it
        per_device_train_batch_size=distributed.per_process_batch(config.batch_size),
        ddp_backend=distributed.ddp_backend(dev.type),
        ddp_find_unused_parameters=False,  # every adapter takes part in every step: no search needed
        max_steps=config.steps,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        weight_decay=0.0,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        # paged_adamw_8bit keeps its states in 8 bits and pages them to host memory under pressure;
        # bitsandbytes' paged optimizers need CUDA, so the CPU uses PyTorch's AdamW.
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        **checkpointing_arguments(cuda),
        bf16=autocast_dtype(config) == torch.bfloat16,
        use_cpu=dev.type == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        logging_first_step=True,
    )


def drop_autocast_wrapper(model) -> bool:
    """Give ``model`` back its own ``forward`` if training left an autocast wrapper on it; True if it did.

    Under mixed precision, accelerate (inside the ``Trainer``) replaces the model's ``forward`` with one
    that runs in autocast and never puts the original back. The trained model would then compute in bf16
    autocast while a reloaded or untrained model does not, and no comparison between them would be like
    with like (the same adapter reloaded gives other logits). accelerate's own unwrapping restores it.
    """
    from accelerate.utils import extract_model_from_parallel

    if "_original_forward" not in model.__dict__:
        return False
    extract_model_from_parallel(model, keep_fp32_wrapper=False)
    return True


@dataclass
class TrainResult:
    """What :func:`train` measured: loss history, wall time, tokens seen and tokens per second."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    tokens: int = 0
    tokens_per_s: float = 0.0
    global_step: int = 0
    world_size: int = 1  # processes that trained together; tokens and tokens/s count all of them


def collator(tokenizer):
    """Pads ``input_ids`` with the pad token and ``labels`` with -100 (so padding is never learned)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each position's logits are scored against: ``labels`` moved one to the left, -100 last.

    (batch, seq) -> (batch, seq). The logits at position t predict token t + 1, so a position whose
    next-token label is -100 (the prompt, the padding, the last token) is never scored.
    """
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)


def training_collator(tokenizer):
    """:func:`collator`, plus a ``logits_to_keep`` mask of the positions that predict an answer token.

    The model's output layer turns every position into 49,152 vocabulary logits, but the loss reads only
    the positions that predict an answer token (the prompt is masked out): about half of them. Given the
    (batch, seq) boolean mask as ``logits_to_keep``, a transformers causal LM projects only those
    positions, so their logits come out flattened to (n_kept, vocab) and :func:`answer_loss` scores them.
    The loss is the same, and a CPU training step takes about a fifth less time (`lora101 bench finetune`
    compares it with a plain script that projects every position).

    transformers before 5.23 (Colab ships 5.15) takes only a count of last positions as ``logits_to_keep``;
    there the mask is left out, every position is projected, and :func:`answer_loss` picks the answer
    positions itself: the same loss, without the saving.
    """
    pad = collator(tokenizer)
    masks = logits_mask_supported()

    def collate(features):
        batch = pad(features)
        if masks:
            batch["logits_to_keep"] = next_token_labels(batch["labels"]) != -100
        return batch

    return collate


def logits_mask_supported() -> bool:
    """Whether this transformers' causal LMs accept a boolean (batch, seq) mask as ``logits_to_keep`` (5.23+)."""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


def answer_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy of the answer tokens from logits kept by :func:`training_collator` (the Trainer's
    ``compute_loss_func``): ``outputs.logits`` is (n_kept, vocab), in the order of the mask's True entries,
    or (batch, seq, vocab) where no mask was given (then the answer positions are picked here).

    Divided by ``num_items_in_batch`` (the answer tokens of the whole optimizer step) when the Trainer
    gives it, as transformers' own causal-LM loss does, else averaged over this batch's answer tokens.
    """
    targets = next_token_labels(labels)
    answer = targets != -100
    targets = targets[answer]
    logits = outputs.logits
    if logits.dim() == 3:  # every position projected: keep the answer positions, as the mask would have
        logits = logits[answer.to(logits.device)]
    logits = logits.float()
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{logits.shape[0]} logits kept for {targets.shape[0]} answer tokens: pass the batch's "
            "logits_to_keep mask (lora101.finetune.training_collator) to the model"
        )
    loss = torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if torch.is_tensor(count):
        count = count.to(loss.device)
    return loss / count


def train(
    model,
    tokenizer,
    train_dataset,
    config: FinetuneConfig,
    output_dir: str | os.PathLike,
    *,
    callbacks: Sequence[Any] = (),
    resume: bool | str = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (a PEFT model) on ``train_dataset`` (columns ``input_ids``, ``attention_mask``,
    ``labels``) for ``config.steps`` optimizer steps of ``config.batch_size`` examples.

    The loss is the cross-entropy of the answer tokens, with logits computed only where it reads them
    (:func:`training_collator`). Checkpoints go to ``output_dir/checkpoint-N`` every ``config.save_steps``;
    ``resume=True`` continues from the newest one there (the optimizer, scheduler, RNG and data order included).
    Tokens per second counts the real (non-padding) tokens of the batches trained in this call.
    """
    from transformers import Trainer, set_seed

    set_seed(config.seed)
    keep = [c for c in ("input_ids", "attention_mask", "labels") if c in train_dataset.column_names]
    if "labels" not in keep or "input_ids" not in keep:
        raise ValueError(
            "train_dataset needs 'input_ids' and 'labels' columns (see lora101.data.tokenize_example)"
        )
    train_dataset = train_dataset.select_columns(keep)
    recorder = _LossRecorder()
    trainer = Trainer(
        model=model,
        args=training_arguments(config, output_dir, progress=progress),
        train_dataset=train_dataset,
        data_collator=training_collator(tokenizer),
        compute_loss_func=answer_loss,
        callbacks=[recorder, *callbacks],
    )
    model.train()
    start = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume if resume else None)
    wall = time.perf_counter() - start
    drop_autocast_wrapper(model)
    model.eval()
    # Real (non-padding) tokens of the steps trained in this call (a resumed run's earlier steps took their
    # own time): steps x the global batch_size examples, the whole job's, counted as passes over the
    # examples (exact for whole epochs; a partial epoch's shuffled picks are approximated by the first ones).
    lengths = [len(x) for x in train_dataset["input_ids"]]
    first = recorder.first_step * config.batch_size
    seen = sum(lengths[i % len(lengths)] for i in range(first, out.global_step * config.batch_size))
    return TrainResult(
        steps=recorder.steps,
        losses=recorder.losses,
        wall_s=wall,
        tokens=int(seen),
        tokens_per_s=float(seen) / wall if wall > 0 else math.nan,
        global_step=out.global_step,
        world_size=trainer.args.world_size,
    )


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir``, or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


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
