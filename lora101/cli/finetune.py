"""``lora101 finetune``: the lesson's QLoRA job from the command line, on a built-in task or your own data.

Your data is JSONL, one example a line, either ``{"prompt": "...", "response": "..."}`` or
``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``
(the last message is the answer to learn). Without ``--data`` it trains on a built-in task of
:mod:`lora101.tasks` (``--task``; the default is lesson 5's contract -> JSON task).

It writes into ``--output``: the adapter (PEFT format), ``report.json`` (``before`` and ``after``
metrics, tokens/s, peak memory, wall time, versions, the configuration), ``loss.png`` and
``checkpoints/`` (for ``--resume``). An output folder that already holds an adapter is never
overwritten unless ``--overwrite`` (or ``--resume``) is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lora101 import distributed
from lora101.data import DataError, load_splits, prompt_text, tokenize_examples
from lora101.distributed import BatchSplitError
from lora101.doctor import installed_versions
from lora101.finetune import MIXED_PRECISIONS, FinetuneConfig
from lora101.tasks import DEFAULT_TASK, get_task, task_names

REPORT = "report.json"
BEFORE = "before.json"  # the base model's scores, kept so that --resume need not measure them again
DEFAULTS = FinetuneConfig()  # the training options' defaults have one home: the config


def register(subparsers) -> None:
    """Add the ``finetune`` command to the ``lora101`` parser."""
    p = subparsers.add_parser(
        "finetune",
        help="QLoRA (or LoRA) fine-tune on a built-in task or your JSONL; reports exact match before/after",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_arguments(p)
    _training_arguments(p)
    p.add_argument("--output", type=Path, required=True, help="folder for the adapter, report.json, loss.png")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    g.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output")
    p.set_defaults(func=run)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--task",
        choices=task_names(),
        help=f"built-in task to train on (default {DEFAULT_TASK}); each is a module of lora101/tasks/",
    )
    source.add_argument("--data", type=Path, help="JSONL of prompt/response pairs or chat messages")
    p.add_argument(
        "--eval-data", type=Path, help="JSONL to evaluate on (default: hold out --eval-fraction of --data)"
    )
    p.add_argument(
        "--eval-fraction", type=float, default=0.1, help="share of --data held out (default %(default)s)"
    )
    p.add_argument(
        "--eval-size",
        type=int,
        default=60,
        help="at most this many evaluation examples (default %(default)s)",
    )
    p.add_argument(
        "--train-size", type=int, default=1200, help="built-in task: training examples (default %(default)s)"
    )
    p.add_argument(
        "--max-length", type=int, default=512, help="longest example in tokens (default %(default)s)"
    )
    p.add_argument("--max-new-tokens", type=int, default=72)


def _training_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULTS.model, help="bundled name, local folder or hub id (default %(default)s)"
    )
    p.add_argument("--rank", type=int, default=DEFAULTS.rank)
    p.add_argument("--alpha", type=int, default=DEFAULTS.alpha)
    p.add_argument(
        "--targets",
        default=DEFAULTS.targets,
        help="'all-linear' or comma-separated module names (q_proj,v_proj)",
    )
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument(
        "--precision",
        choices=["nf4", "bf16"],
        default=DEFAULTS.precision,
        help="nf4 = QLoRA (default), bf16 = LoRA",
    )
    p.add_argument("--save-steps", type=int, default=DEFAULTS.save_steps)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", default=DEFAULTS.device, help="cpu, cuda, ... (default: automatic)")
    p.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISIONS,
        default=DEFAULTS.mixed_precision,
        help="bf16 autocast: auto = on GPUs with native bf16 (compute capability 8.0+) only; "
        "bf16 forces it (a CPU runs it too), no turns it off",
    )


# ------------------------------------------------------------------------------------------------
# The job


def run(args) -> int:
    """Run the job; returns 0 on success, 2 on bad input (message on stderr)."""
    try:
        return _run(args)
    except (DataError, FileExistsError, BatchSplitError, OptionError) as err:
        print(f"lora101 finetune: error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.finish()


def _run(args) -> int:
    from lora101 import finetune as ft
    from lora101.models import choose_device, load_tokenizer
    from lora101.plots import loss_curve

    out = _checked_output(args)
    config = _config(args)
    per_process = distributed.per_process_batch(config.batch_size)  # before any loading: fail fast
    task_name = None if args.data else args.task or DEFAULT_TASK
    task = get_task(task_name) if task_name else None
    train_ex, eval_ex = load_splits(
        args.data,
        args.eval_data,
        task=task,
        train_size=args.train_size,
        eval_size=args.eval_size,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
    )
    tokenizer = load_tokenizer(args.model)
    train_ds = tokenize_examples(tokenizer, train_ex, args.data, args.max_length)
    tokenize_examples(tokenizer, eval_ex, args.eval_data or args.data, args.max_length)  # same length check
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Under torchrun / accelerate launch: join the other processes now, so that they can wait for rank 0.
    distributed.start(choose_device(args.device).type)

    model = ft.add_lora(
        ft.load_base(args.model, args.precision, args.device), args.rank, args.alpha, args.targets
    )
    evaluate = _evaluator(args, model, tokenizer, eval_ex, task)
    before = _before(args, out, evaluate) if distributed.is_main_process() else None
    distributed.wait_for_everyone()  # the others wait while rank 0 measures the untrained model
    result = ft.train(model, tokenizer, train_ds, config, out / "checkpoints", resume=bool(args.resume))
    if not distributed.is_main_process():  # every process holds the same adapter: rank 0 writes it
        return 0
    after, preds = evaluate("after")
    print(f"after:  exact match {after['exact_match']:.1%} on {after['n']} held-out examples", flush=True)
    ft.save_adapter(model, out, overwrite=True)  # guarded by _checked_output: only reached when allowed
    loss_curve(result.steps, result.losses, total_steps=args.steps).savefig(out / "loss.png", dpi=80)
    report = {
        "before": before,
        "after": after,
        "examples": [
            {"prompt": ex["messages"][-1]["content"], "expected": ex["response"], "after": p}
            for ex, p in list(zip(eval_ex, preds, strict=False))[:5]
        ],
        "task": task_name,
        "train_examples": len(train_ex),
        **_measurements(args, config, result, start),
        **_processes(result, per_process),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}: adapter, {REPORT}, loss.png ({result.tokens_per_s:.0f} tokens/s)")
    return 0


class OptionError(ValueError):
    """A training option FinetuneConfig refuses, named as the command line spells it."""


def _config(args) -> FinetuneConfig:
    """The training options as a config, its schedule (warm-up, logging, checkpoints) following ``--steps``.

    FinetuneConfig names a bad value by its field (``batch_size must be ...``); the learner typed an option,
    so the error says ``--batch-size``.
    """
    try:
        return _config_from(args)
    except ValueError as err:
        field, _, rest = str(err).partition(" ")
        raise OptionError(f"--{field.replace('_', '-')} {rest}") from None


def _config_from(args) -> FinetuneConfig:
    return FinetuneConfig.for_steps(
        args.steps,
        model=args.model,
        precision=args.precision,
        rank=args.rank,
        alpha=args.alpha,
        targets=args.targets,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        save_steps=args.save_steps,
        device=args.device,
        mixed_precision=args.mixed_precision,
    )


def _checked_output(args) -> Path:
    """``--output``, once it is sure nothing there is lost and ``--resume`` has something to resume."""
    from lora101.finetune import has_adapter, last_checkpoint

    out = Path(args.output)
    if has_adapter(out) and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"--output {out} already holds an adapter; choose another folder with --output, "
            "or pass --resume (continue that run) or --overwrite (replace it)"
        )
    if args.resume and last_checkpoint(out / "checkpoints") is None:
        raise FileExistsError(f"--resume: {out / 'checkpoints'} holds no checkpoint to resume from")
    return out


def _evaluator(args, model, tokenizer, eval_ex: list[dict], task):
    """``evaluate(desc)`` -> (metrics, predictions) of ``model`` on the held-out examples, scored by the task's scorer."""
    from lora101.evaluate import evaluate_model, score

    prompts = [prompt_text(tokenizer, ex["messages"]) for ex in eval_ex]
    refs = [ex["response"] for ex in eval_ex]
    scorer = task.score if task else score
    gen = dict(
        max_new_tokens=args.max_new_tokens, batch_size=64
    )  # as lesson 5: fewer, larger batches cost less

    def evaluate(desc: str) -> tuple[dict[str, Any], list[str]]:
        return evaluate_model(model, tokenizer, prompts, refs, scorer=scorer, desc=desc, **gen)

    return evaluate


def _before(args, out: Path, evaluate) -> dict[str, Any]:
    """The untrained model's scores: measured (and kept for --resume), or read back when resuming."""
    if args.resume and (out / BEFORE).is_file():
        before = json.loads((out / BEFORE).read_text())
    else:  # B = 0: the freshly wrapped model computes exactly what the base does
        before, _ = evaluate("before")
        (out / BEFORE).write_text(json.dumps(before, indent=2))
    print(f"before: exact match {before['exact_match']:.1%} on {before['n']} held-out examples", flush=True)
    return before


def _measurements(args, config: FinetuneConfig, result, start: float) -> dict[str, Any]:
    """The report's training figures, the machine's peak memory, the configuration and the versions."""
    import torch

    from lora101.memory import peak_memory_bytes
    from lora101.models import choose_device

    device = choose_device(args.device)
    return {
        "steps": result.global_step,
        "loss": {"steps": result.steps, "values": result.losses},
        "tokens": result.tokens,  # trained in this call: a resumed run counts only its own steps
        "tokens_per_s": result.tokens_per_s,
        "train_wall_s": result.wall_s,
        "wall_s": time.perf_counter() - start,
        "peak_memory_bytes": peak_memory_bytes(device),
        "peak_memory_kind": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "process peak RSS",
        "device": str(device),
        "config": config.to_dict(),
        "versions": installed_versions(),
        "torch_threads": torch.get_num_threads(),
    }


def _processes(result, per_process: int) -> dict[str, Any]:
    """How many processes trained (torchrun / accelerate launch) and how each step's batch was split.

    ``tokens_per_s`` already counts the whole job: every process's tokens over rank 0's training time.
    Peak memory is rank 0's alone (each process holds its own copy of the model).
    """
    return {
        "world_size": result.world_size,
        "global_batch": per_process * result.world_size,
        "per_process_batch": per_process,
    }
