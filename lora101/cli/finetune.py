"""``lora101 finetune``: the lesson's QLoRA job from the command line, on a built-in task or your own data.

Your data is JSONL, one example a line, either ``{"prompt": "...", "response": "..."}`` or
``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``
(the last message is the answer to learn). Without ``--data`` it trains on a built-in task of
:mod:`lora101.tasks` (``--task``; the default is lesson 5's contract -> JSON task).

It writes into ``--output``: the adapter (PEFT format), ``report.json`` (``before`` and ``after``
metrics, the whole loss history, tokens/s, peak memory, wall time, versions, the configuration),
``loss.png`` and ``checkpoints/`` (every tenth of the steps unless ``--save-steps``). ``--output`` must be
new or empty: ``--overwrite`` replaces only a finished run of the same configuration, ``--resume``
continues an unfinished one of the same configuration from its newest intact checkpoint. Ctrl-C stops a
run and prints the command that continues it. The job itself is ``lora101.finetune.run``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lora101 import distributed
from lora101 import finetune as ft
from lora101.errors import Interrupted
from lora101.finetune import MIXED_PRECISIONS, FinetuneConfig
from lora101.tasks import DEFAULT_TASK, task_names

DEFAULTS = FinetuneConfig()  # the options' defaults have one home: the config


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
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run of the same configuration in --output",
    )
    p.set_defaults(func=run)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--task",
        choices=task_names(),
        help=f"built-in task to train on (default {DEFAULT_TASK}); each is a module of lora101/tasks/",
    )
    source.add_argument("--data", help="JSONL of prompt/response pairs or chat messages")
    p.add_argument("--eval-data", help="JSONL to evaluate on (default: hold out --eval-fraction of --data)")
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=DEFAULTS.eval_fraction,
        help="share of --data held out (default %(default)s)",
    )
    p.add_argument(
        "--eval-size",
        type=int,
        default=DEFAULTS.eval_size,
        help="at most this many evaluation examples (default %(default)s)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=DEFAULTS.train_size,
        help="built-in task: training examples (default %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=DEFAULTS.max_length,
        help="longest example in tokens (default %(default)s)",
    )
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)


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
    p.add_argument("--steps", type=int, default=FinetuneConfig.steps)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument(
        "--precision",
        choices=["nf4", "bf16"],
        default=DEFAULTS.precision,
        help="nf4 = QLoRA (default), bf16 = LoRA",
    )
    p.add_argument(
        "--save-steps", type=int, default=None, help="checkpoint interval (default: a tenth of --steps)"
    )
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
# The job: lora101.finetune.run; here only the options become a config and the report is printed

# The options that are FinetuneConfig fields (each spelled as its field, --batch-size for batch_size).
CONFIG_OPTIONS = tuple(
    "model precision rank alpha targets batch_size lr seed save_steps device mixed_precision task data "
    "eval_data eval_fraction train_size eval_size max_length max_new_tokens".split()
)


def run(args) -> int:
    """Run the job; returns 0 on success, 130 after Ctrl-C (bad input raises UsageError: ``cli.main``'s one line)."""
    try:
        config = config_from(args)
        report = ft.run(config, output_dir=args.output, resume=args.resume, overwrite=args.overwrite)
    except Interrupted as stop:
        _interrupted(args, stop.saved, stop.checkpoint)
        return 130
    except KeyboardInterrupt:  # outside training (reading, loading, writing): say what the folder holds
        checkpoint = ft.last_checkpoint(args.output / "checkpoints")
        _interrupted(args, f"{checkpoint} is saved" if checkpoint else "no checkpoint was saved", checkpoint)
        return 130
    finally:
        distributed.finish()
    if report.after is not None:
        print(
            f"held-out exact match: {report.before['exact_match']:.1%} before, {report.after['exact_match']:.1%} after"
        )
    return 0


def _interrupted(args, saved: str, checkpoint) -> None:
    again = resume_command(args) if checkpoint is not None else "run the same command again"
    print(f"lora101 finetune: interrupted; {saved}; to continue: {again}", file=sys.stderr)


def config_from(args) -> FinetuneConfig:
    """The options as a config, its schedule (warm-up, logging, checkpoints) following ``--steps``."""
    settings = {name: getattr(args, name) for name in CONFIG_OPTIONS}
    if args.data is not None:
        settings["task"] = None
    elif settings["task"] is None:
        settings["task"] = DEFAULT_TASK
    return FinetuneConfig.for_steps(args.steps, **settings)


def resume_command(args) -> str:
    """The command that continues this run: ``lora101 finetune`` with the options given, and ``--resume``."""
    parts = ["lora101", "finetune"]
    defaults = build_defaults()
    for name in ("steps", *CONFIG_OPTIONS, "output"):
        value = getattr(args, name)
        if value is not None and value != defaults.get(name):
            parts += ["--" + name.replace("_", "-"), str(value)]
    return shlex.join([*parts, "--resume"])


def build_defaults() -> dict:
    """Every option's default, as the parser holds them."""
    parser = argparse.ArgumentParser()
    _data_arguments(parser)
    _training_arguments(parser)
    return vars(parser.parse_args([]))
