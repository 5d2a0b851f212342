"""The ``lora101`` command: ``doctor``, ``model prepare|info``, ``sweep``, ``bench NAME`` and the course's jobs.

One convention for commands. A top-level command is a module ``lora101/cli/NAME.py`` with
``register(subparsers)``: it adds its parser and sets ``func`` (called with the parsed arguments,
returning the exit status); the library it drives stays in its own module. Benchmarks are found by
themselves: every module in ``lora101/bench/`` with ``add_arguments(parser)`` and ``run(args) -> int``
becomes ``lora101 bench MODULE``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from pathlib import Path

from lora101 import bench
from lora101.errors import ConfigError, UsageError

# Modules that add a top-level command (each with a ``register(subparsers)`` function).
COMMAND_MODULES = [
    "lora101.cli.doctor",
    "lora101.cli.model",
    "lora101.cli.finetune",
    "lora101.cli.sweep",
    "lora101.cli.grade",
    "lora101.cli.colab",
    "lora101.cli.export",
]
# Old names kept working: ``lora101 bench NAME`` runs the command module's ``add_arguments`` and ``run``
# (earlier versions of lesson 6 and their results files named ``lora101 bench sweep``).
BENCH_ALIASES = {"sweep": "lora101.cli.sweep"}


def _benchmark_names() -> dict[str, str]:
    """Benchmark modules and the first line of their docstrings, read without importing them.

    Importing a benchmark pulls in peft, bitsandbytes and friends: only the one that runs is imported.
    """

    names = {}
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        tree = ast.parse(Path(bench.__path__[0], f"{info.name}.py").read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        if not {"add_arguments", "run"} <= functions:
            continue  # a helper shared by the benchmarks (timing.py), not a benchmark itself
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        names[info.name] = doc[0] if doc else ""
    return names


def _register_benchmarks(subparsers, argv: list[str]) -> None:
    parser = subparsers.add_parser(
        "bench", help="measure something and print a table (timings live here, not in tests)"
    )
    names = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    chosen = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    summaries = _benchmark_names()
    summaries.update({name: f"the same as lora101 {name}" for name in BENCH_ALIASES})
    for name, summary in sorted(summaries.items()):
        sub = names.add_parser(name, help=summary, description=summary)
        if name == chosen:
            module = importlib.import_module(BENCH_ALIASES.get(name, f"lora101.bench.{name}"))
            sub.description = module.__doc__
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(sub)
            sub.set_defaults(func=module.run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lora101", description="LoRA and QLoRA, built from scratch.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _register_benchmarks(subparsers, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lora101 ARGV``; bad input ends in one line on stderr and exit status 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    benchmark = getattr(args, "benchmark", None)
    # an alias (lora101 bench sweep) speaks as the command it is
    command = benchmark if benchmark in BENCH_ALIASES else " ".join(a for a in (args.command, benchmark) if a)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:  # a configuration field: the option that sets it has the field's name
        print(f"{parser.prog} {command}: error: {option_name(err.field)}: {err.message}", file=sys.stderr)
    except UsageError as err:  # OptionError, bad data, an output folder that must not be written, ...
        print(f"{parser.prog} {command}: error: {err}", file=sys.stderr)
    except ValueError as err:
        # Commands not yet raising OptionError refuse an option with ValueError("--option: why"); any other
        # ValueError is a bug and keeps its traceback.
        if not str(err).startswith("--"):
            raise
        print(f"{parser.prog} {command}: error: {err}", file=sys.stderr)
    return 2


def option_name(field: str) -> str:
    """The command-line option that sets configuration field ``field``: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
