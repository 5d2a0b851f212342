"""The ``lora101`` command: ``doctor``, ``model prepare|info``, ``bench NAME`` and the course's jobs.

Each command lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` (called with the parsed arguments, returning the exit status). Benchmarks are
found by themselves: every module in ``lora101/bench/`` with ``add_arguments(parser)`` and
``run(args) -> int`` becomes ``lora101 bench MODULE``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

# Modules that add a top-level command (each with a ``register(subparsers)`` function).
COMMAND_MODULES = [
    "lora101.doctor",
    "lora101.model_cli",
]


def _register_benchmarks(subparsers) -> None:
    from lora101 import bench

    parser = subparsers.add_parser(
        "bench", help="measure something and print a table (timings live here, not in tests)"
    )
    names = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lora101.bench.{info.name}")
        doc = (module.__doc__ or "").strip().splitlines()
        sub = names.add_parser(info.name, help=doc[0] if doc else None, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora101", description="LoRA and QLoRA, built from scratch.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _register_benchmarks(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
