"""Benchmarks: each module here is ``lora101 bench MODULE`` (``add_arguments(parser)``, ``run(args) -> int``).

Timings belong here, printed as tables, never in tests.
"""
