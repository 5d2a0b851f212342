"""Training an adapter: the transformers ``Trainer`` with the loss read only where the answer is, checkpoints.

transformers and accelerate are imported inside the functions that use them: importing them takes seconds,
and the command line imports this package for every command, ``lora101 --help`` included.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from lora101 import distributed
from lora101.data import collator, next_token_labels
from lora101.finetune.config import FinetuneConfig
from lora101.models import choose_device, has_native_bf16
from lora101.plots import figure_image, loss_curve


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
                # Resumed: the checkpoint's log holds the losses before it, so the history stays whole.
                self.first_step = state.global_step
                earlier = [
                    e for e in state.log_history if "loss" in e and e.get("step", 0) <= state.global_step
                ]
                self.steps = [int(e["step"]) for e in earlier]
                self.losses = [float(e["loss"]) for e in earlier]

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.steps.append(state.global_step)
                    self.losses.append(float(logs["loss"]))

        return LossRecorder()


def live_loss_plot(total_steps: int):
    """A ``TrainerCallback`` that redraws the loss curve in a notebook each time the Trainer logs."""
    from transformers import TrainerCallback

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
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def training_arguments(config: FinetuneConfig, output_dir: str | os.PathLike, *, progress: bool = True):
    """transformers ``TrainingArguments`` for ``config``: cosine schedule with warmup, checkpoints,
    and on CUDA the QLoRA memory savers (paged 8-bit AdamW, gradient checkpointing), bf16 autocast
    where :func:`autocast_dtype` says so."""
    from transformers import TrainingArguments

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
        # TF32 off on CUDA: fp32 matmuls stay fp32, so a merged model and the adapter it came from agree to
        # float rounding (TF32 keeps 10 mantissa bits); the CPU has no TF32 (None leaves it alone).
        tf32=False if cuda else None,
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


def training_collator(tokenizer):
    """:func:`lora101.data.collator`, plus a ``logits_to_keep`` mask of the positions that predict an answer.

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
    resume: bool | str | os.PathLike = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (a PEFT model) on ``train_dataset`` (columns ``input_ids``, ``attention_mask``,
    ``labels``) for ``config.steps`` optimizer steps of ``config.batch_size`` examples.

    The loss is the cross-entropy of the answer tokens, with logits computed only where it reads them
    (:func:`training_collator`). Checkpoints go to ``output_dir/checkpoint-N`` every ``config.save_steps``;
    ``resume=True`` continues from the newest one there, ``resume=PATH`` from that checkpoint (the optimizer,
    scheduler, RNG and data order included); the loss history then starts with the checkpoint's own log.
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
    out = trainer.train(
        resume_from_checkpoint=str(resume) if isinstance(resume, (str, os.PathLike)) else resume or None
    )
    wall = time.perf_counter() - start
    drop_autocast_wrapper(model)
    model.eval()
    seen = _tokens_seen(train_dataset, recorder.first_step, out.global_step, config.batch_size)
    return TrainResult(
        steps=recorder.steps,
        losses=recorder.losses,
        wall_s=wall,
        tokens=int(seen),
        tokens_per_s=float(seen) / wall if wall > 0 else math.nan,
        global_step=out.global_step,
        world_size=trainer.args.world_size,
    )


def _tokens_seen(train_dataset, first_step: int, last_step: int, batch_size: int) -> int:
    """Real (non-padding) tokens of steps ``first_step``+1 to ``last_step`` (a resumed run's earlier steps took
    their own time): steps x the global ``batch_size`` examples, the whole job's, counted as passes over the
    examples (exact for whole epochs; a partial epoch's shuffled picks are approximated by the first ones)."""
    lengths = [len(x) for x in train_dataset["input_ids"]]
    return sum(lengths[i % len(lengths)] for i in range(first_step * batch_size, last_step * batch_size))


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``output_dir``, or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders in ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why the checkpoint ``folder`` cannot be resumed from (a file missing, unreadable or cut short), or None.

    Reads the trainer state, the safetensors headers (which must cover the whole file) and the central
    directory at the end of each ``torch.save`` archive: a write cut short leaves one of them incomplete.
    """

    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"trainer_state.json is unreadable ({type(err).__name__})"
    weights = [p for p in folder.glob("*.safetensors")]
    if not weights:
        return "it holds no weights (*.safetensors)"
    for path in weights:
        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as err:  # safetensors raises its own error type for a file cut short
            return f"{path.name} is damaged ({err})"
    # one rng_state.pth, or one rng_state_RANK.pth a process when several trained together
    rng = sorted(p.name for p in folder.glob("rng_state*.pth")) or ["rng_state.pth"]
    for name in ("optimizer.pt", "scheduler.pt", *rng):
        try:
            zipfile.ZipFile(folder / name).close()
        except (OSError, zipfile.BadZipFile) as err:
            return f"{name} is missing or cut short ({type(err).__name__})"
    return None


def resumable_checkpoint(output_dir: str | os.PathLike) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in ``output_dir`` that can be resumed from, and why each newer one cannot."""
    skipped = []
    for folder in reversed(checkpoints(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, skipped
        skipped.append(f"{folder.name}: {problem}")
    return None, skipped


def logged_losses(checkpoint: str | os.PathLike) -> tuple[list[int], list[float]]:
    """(steps, losses) logged up to ``checkpoint``, from its trainer state."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    logged = [e for e in state.get("log_history", []) if "loss" in e]
    return [int(e["step"]) for e in logged], [float(e["loss"]) for e in logged]
