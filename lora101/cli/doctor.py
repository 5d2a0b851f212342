"""``lora101 doctor``: run every check of ``lora101.doctor`` and print what to fix; non-zero if one failed."""

from __future__ import annotations

from lora101.doctor import report, run_checks


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check this machine for the course and say what to fix")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    results = run_checks()
    print(report(results))
    return 1 if any(c.status == "FAIL" for c in results) else 0
