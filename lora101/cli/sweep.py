"""Lesson 6's sweeps: rank, target modules, alpha, learning rate, full FT vs LoRA vs QLoRA, bad fits; writes a JSON results file.

Each run trains SmolLM2-135M-Instruct on the contract -> JSON task (lora101.data) for --steps optimizer
steps of --batch-size fresh examples, in its own process, and scores --eval-examples held-out examples
(test loss, token accuracy, exact match; see lora101.sweep), once per seed of --seeds: the seed draws
the training examples, their order and the adapter's first matrices; the held-out examples are the same
for every run. Tables then show each score's mean and its range over the seeds (lora101.sweep_stats).
The results file records the machine, the library versions, the settings, this command line and every
measured number; an existing file is never replaced unless --force is given. While the sweep runs,
finished runs are kept in OUTPUT.partial; --resume carries on from them after an interruption.

Groups (--groups, default all): method (base untrained, full FT, LoRA, QLoRA), lr (both methods at both
learning rates), rank (--ranks, alpha = 2r), targets (q,v vs all linear layers at an equal parameter
budget), alpha (--alphas at the reference rank), wrong_tool (a random-init base, noisy answers).

Examples (``lora101 bench sweep``, its old name, is the same command):
  lora101 sweep --output sweep.json                                 # everything (hours on a laptop CPU)
  lora101 sweep --output sweep.json --resume                        # carry on after an interruption
  lora101 sweep --output quick.json --groups rank --ranks 1,16 --steps 10 --eval-examples 16 --seeds 0
"""

from __future__ import annotations

import argparse
import shlex

from lora101.errors import ConfigError, OptionError
from lora101.sweep import (
    ALPHAS,
    GROUPS,
    RANKS,
    Settings,
    check_output_path,
    check_partial,
    plan,
    run_sweep,
    table,
)


def register(subparsers) -> None:
    """Add the ``sweep`` command to the ``lora101`` parser (``lora101 bench sweep`` is the same command)."""
    parser = subparsers.add_parser(
        "sweep",
        help=__doc__.splitlines()[0],
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", required=True, help="results file to write (.json); never replaced without --force"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing results file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="carry on from OUTPUT.partial, the runs a stopped sweep finished (same options needed)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    _output_arguments(parser)
    parser.add_argument(
        "--groups", default=",".join(GROUPS), help="comma-separated subset of " + ", ".join(GROUPS)
    )
    parser.add_argument(
        "--ranks", default=",".join(map(str, RANKS)), help="ranks of the rank group (default %(default)s)"
    )
    parser.add_argument(
        "--alphas", default=",".join(map(str, ALPHAS)), help="alphas of the alpha group (default %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=d.steps, help="optimizer steps per run (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="examples per step (default %(default)s)"
    )
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=d.eval_examples,
        help="held-out examples scored per run (default %(default)s)",
    )
    parser.add_argument(
        "--rank", type=int, default=d.rank, help="the reference adapter's rank (default %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=d.lr, help="LoRA learning rate (default %(default)s)")
    parser.add_argument(
        "--full-lr",
        type=float,
        default=d.full_lr,
        help="full fine-tuning learning rate (default %(default)s)",
    )
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="default %(default)s")
    parser.add_argument(
        "--noise",
        type=float,
        default=d.noise,
        help="fraction of wrong answers in the poor-data run (default %(default)s)",
    )
    parser.add_argument(
        "--seeds",
        default="0,1,2",
        help="comma-separated seeds; every run is repeated once per seed (default %(default)s: three, so "
        "each setting has a spread; lora101.sweep.Settings itself defaults to one)",
    )
    parser.add_argument(
        "--threads", type=int, default=d.threads, help="torch threads per run; 0: torch's default"
    )
    parser.add_argument("--model", default=d.model, help="base model (default %(default)s)")


def _ints(text: str, option: str, smallest: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(option, f"{text!r} is not a comma-separated list of integers") from None
    if not values or any(v < smallest for v in values):
        kind = "positive integers" if smallest == 1 else f"integers >= {smallest}"
        raise OptionError(option, f"give {kind}, got {text!r}")
    return values


# Settings' fields and the options that set them (the same name, but --eval-examples for eval_examples).
SETTINGS = (
    "steps",
    "batch_size",
    "eval_examples",
    "rank",
    "lr",
    "full_lr",
    "warmup_steps",
    "noise",
    "threads",
)


def parse(args: argparse.Namespace):
    """(runs, settings, output path) from the parsed arguments; OptionError names the option."""
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    ranks, alphas = _ints(args.ranks, "--ranks"), _ints(args.alphas, "--alphas")
    seeds = _ints(args.seeds, "--seeds", smallest=0)
    if any(r > 256 for r in ranks):
        raise OptionError(
            "--ranks", f"at most 256 (SmolLM2's k/v projections are 192 wide), got {args.ranks!r}"
        )
    try:
        settings = Settings(**{name: getattr(args, name) for name in SETTINGS}, seeds=seeds, model=args.model)
        runs = plan(settings, groups, ranks, alphas)
    except ConfigError as err:  # a field of Settings, set by the option of the same name
        raise OptionError("--" + err.field.replace("_", "-"), err.message) from None
    path = check_output_path(args.output, args.force)
    check_partial(path, args.resume, args.force)
    return runs, settings, path


def command_line(args: argparse.Namespace) -> str:
    """The full command, every option spelled out, that reproduces this sweep (recorded in the file)."""
    parts = ["lora101", "sweep"]
    for key, value in vars(args).items():
        if key in ("command", "benchmark", "func", "resume") or value is False or value is None:
            continue
        parts.append("--" + key.replace("_", "-"))
        if value is not True:
            parts.append(str(value))
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; a bad option raises OptionError (``cli.main`` prints it as one line, exit status 2)."""
    runs, settings, path = parse(args)
    command = command_line(args)
    print(
        f"{len(runs)} runs x {len(settings.seeds)} seeds x {settings.steps} steps of {settings.batch_size} "
        f"examples; results -> {path}",
        flush=True,
    )
    doc = run_sweep(runs, settings, path, force=args.force, resume=args.resume, command=command)
    print(table(doc["runs"], timing=True))
    print(f"written {path}")
    return 0
