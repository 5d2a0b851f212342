"""QLoRA vs LoRA vs a plain transformers + PEFT script: tokens/s and peak memory of the same training job.

Each variant runs in a fresh Python process (lora101.fresh_process), so that its peak memory is its
own: on CUDA ``torch.cuda.max_memory_allocated``, on the CPU the process's peak resident set (VmHWM on
Linux, which also counts Python, torch and the libraries: the same fixed cost in every row).

* ``qlora``    - lora101.finetune with the base in 4-bit NF4 (+ double quantisation);
* ``lora``     - lora101.finetune with a 16-bit base (fp32 on a CPU or a pre-Ampere GPU, which have no native
  bf16 matmul);
* ``baseline`` - the same 4-bit job written as a plain transformers + PEFT script would write it.

The ratio qlora / baseline tokens/s says whether lora101's loop costs anything over the plain script.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from lora101 import finetune as ft
from lora101 import fresh_process
from lora101.data import task_examples
from lora101.errors import OptionError
from lora101.memory import peak_memory_bytes
from lora101.models import DEFAULT_MODEL, choose_device, compute_dtype_for, load_tokenizer, resolve_model
from lora101.tasks import contracts

VARIANTS = ("qlora", "lora", "baseline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="base model: a bundled name, a folder or a hub id (default: the bundled SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--steps", type=int, default=6, help="optimizer steps per variant (default %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON as well")


def _dataset(tokenizer, n: int):
    return contracts.build_dataset(tokenizer, n_train=n, n_test=1)["train"].select_columns(
        ["input_ids", "attention_mask", "labels"]
    )


def _measure(trainer, dataset, steps: int, batch_size: int) -> tuple[float, int]:
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    lengths = [len(x) for x in dataset["input_ids"]]
    return wall, sum(lengths[: steps * batch_size])


def measure(spec: dict) -> dict:
    """One variant's row, measured in this process (``run`` starts a fresh one for each: see the docstring)."""
    kind, steps = spec["kind"], spec["steps"]
    device = choose_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if kind in ("qlora", "lora"):
        wall, tokens = _lora101_loop(spec)
    else:
        wall, tokens = _plain_script(spec, device)
    return {
        "variant": kind,
        "steps": steps,
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "peak_memory_bytes": peak_memory_bytes(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _config(spec: dict) -> ft.FinetuneConfig:
    """lora101's side of the job as a FinetuneConfig, which checks the options (its errors name the field)."""
    return ft.FinetuneConfig(
        model=spec.get("model") or DEFAULT_MODEL,
        precision="nf4" if spec["kind"] == "qlora" else "bf16",
        rank=spec["rank"],
        alpha=spec["alpha"],
        steps=spec["steps"],
        batch_size=spec["batch_size"],
        save_steps=10**6,
    )


def _lora101_loop(spec: dict) -> tuple[float, int]:
    """lora101's own job (``lora101.finetune.run``, no evaluation, nothing kept): seconds and tokens trained."""
    examples = task_examples(contracts, spec["steps"] * spec["batch_size"], "train", seed=0)  # as _dataset
    report = ft.run(_config(spec), (examples, []), evaluate=False, progress=False)
    return report.train.wall_s, report.train.tokens


def _plain_script(spec: dict, device) -> tuple[float, int]:
    """What a plain transformers + PEFT script does, written out: seconds and tokens trained."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    model_name = spec.get("model") or DEFAULT_MODEL
    tok = load_tokenizer(model_name)
    ds = _dataset(tok, spec["steps"] * spec["batch_size"])

    cuda = device.type == "cuda"
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype_for(device),
    )
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(model_name).path, quantization_config=quant, device_map={"": str(device)}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cuda)
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec["rank"],
            lora_alpha=spec["alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=spec["tmp"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        learning_rate=ft.FinetuneConfig().lr,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        report_to=[],
        save_strategy="no",
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        **ft.checkpointing_arguments(cuda),
        bf16=ft.autocast_dtype(ft.FinetuneConfig()) is not None,
        use_cpu=not cuda,
        disable_tqdm=True,
        seed=0,
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    return _measure(trainer, ds, spec["steps"], spec["batch_size"])


def run(args: argparse.Namespace) -> int:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise OptionError("--variants", f"unknown {unknown}; choose from {VARIANTS}")
    specs = [
        dict(
            kind=kind,
            model=args.model,
            steps=args.steps,
            batch_size=args.batch_size,
            rank=args.rank,
            alpha=args.alpha,
        )
        for kind in variants
    ]
    for spec in specs:  # a bad --model, --rank, ... ends here in one line, before any process starts
        _config(spec)
    rows = []
    for spec in specs:
        with tempfile.TemporaryDirectory() as tmp:
            label = f"bench finetune {spec['kind']}"
            rows.append(
                fresh_process.run("lora101.bench.finetune:measure", {**spec, "tmp": tmp}, label=label)
            )
    _print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def _print_table(rows: list[dict]) -> None:
    by = {r["variant"]: r for r in rows}
    print(f"{'variant':<10} {'steps':>5} {'tokens':>7} {'wall s':>8} {'tokens/s':>9} {'peak MiB':>9}")
    for r in rows:
        print(
            f"{r['variant']:<10} {r['steps']:>5} {r['tokens']:>7} {r['wall_s']:>8.1f} {r['tokens_per_s']:>9.1f} "
            f"{r['peak_memory_bytes'] / 2**20:>9.0f}"
        )
    kind = "torch.cuda.max_memory_allocated" if rows and rows[0]["device"].startswith("cuda") else "peak RSS"
    print(f"device {rows[0]['device'] if rows else '?'}; memory = {kind}")
    if "qlora" in by and "lora" in by:
        q, l_ = by["qlora"], by["lora"]
        print(
            f"QLoRA / LoRA: memory {q['peak_memory_bytes'] / l_['peak_memory_bytes']:.2f}x, "
            f"speed {q['tokens_per_s'] / l_['tokens_per_s']:.2f}x"
        )
    if "qlora" in by and "baseline" in by:
        ratio = by["qlora"]["tokens_per_s"] / by["baseline"]["tokens_per_s"]
        print(f"lora101 loop / plain transformers+PEFT script: {ratio:.2f}x tokens/s (bar: >= 0.95)")
