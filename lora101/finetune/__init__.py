"""The real QLoRA fine-tune: one entry point, :func:`run`, and the steps it is made of.

:func:`run` is the whole job, the one that ``lora101 finetune``, lesson 5, the sweeps of lesson 6 and
``lora101 bench finetune`` call: a :class:`FinetuneConfig` in, a :class:`Report` out (the data, the base
and its adapters, an evaluation before and after, training with checkpoints, the adapter, ``loss.png`` and
``report.json``). The steps, in the order the lesson builds them (Dettmers et al., 2023):

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

The package's modules: ``config`` (the run's description), ``model`` (base, adapters, saving),
``training`` (the Trainer, the loss, checkpoints), ``recipe`` (:func:`run`).
"""

from __future__ import annotations

# ft.collator and ft.next_token_labels, as lessons 5 and 8 call them (they live with the data they batch)
from lora101.data import collator, next_token_labels
from lora101.errors import ConfigError, Interrupted, OutputError
from lora101.finetune.config import MIXED_PRECISIONS, PRECISIONS, FinetuneConfig
from lora101.finetune.model import (
    ADAPTER_FILES,
    add_lora,
    dequantized_base,
    enable_checkpointing,
    folder_bytes,
    full_precision_on,
    has_adapter,
    keep_cpu_weights_unpacked,
    load_adapter,
    load_base,
    lora_config,
    merge_adapter,
    save_adapter,
)
from lora101.finetune.recipe import REPORT, Report, build_model, run
from lora101.finetune.training import (
    TrainResult,
    answer_loss,
    autocast_dtype,
    checkpoint_problem,
    checkpointing_arguments,
    drop_autocast_wrapper,
    last_checkpoint,
    live_loss_plot,
    logits_mask_supported,
    resumable_checkpoint,
    train,
    training_arguments,
    training_collator,
)
from lora101.lora import count_parameters  # ft.count_parameters, as lesson 5 calls it

__all__ = [
    "ADAPTER_FILES",
    "MIXED_PRECISIONS",
    "PRECISIONS",
    "REPORT",
    "ConfigError",
    "FinetuneConfig",
    "Interrupted",
    "OutputError",
    "Report",
    "TrainResult",
    "add_lora",
    "answer_loss",
    "autocast_dtype",
    "build_model",
    "checkpoint_problem",
    "checkpointing_arguments",
    "collator",
    "count_parameters",
    "dequantized_base",
    "drop_autocast_wrapper",
    "enable_checkpointing",
    "folder_bytes",
    "full_precision_on",
    "has_adapter",
    "keep_cpu_weights_unpacked",
    "last_checkpoint",
    "live_loss_plot",
    "load_adapter",
    "load_base",
    "logits_mask_supported",
    "lora_config",
    "merge_adapter",
    "next_token_labels",
    "resumable_checkpoint",
    "run",
    "save_adapter",
    "train",
    "training_arguments",
    "training_collator",
]
