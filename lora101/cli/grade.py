"""``lora101 grade`` and ``lora101 grade-merge``: the commands over ``lora101.grading`` (whose docstring is
``lora101 grade --help``)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

from lora101 import grading
from lora101.grading import CELL_TIMEOUT_S, COURSE_DIR, grade, grade_merge
from lora101.grading.config import SUBMISSION_BUDGET_S, Options
from lora101.grading.parallel import parse_shard
from lora101.grading.sandbox import SandboxLimits


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "grade",
        help="autograde a folder of submissions: feedback HTML and scores.csv, no Jupyter server needed",
        description=grading.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR")
    p.add_argument(
        "--out", type=Path, default=None, help="grading folder (default: SUBMISSIONS_DIR/../graded)"
    )
    p.add_argument(
        "--course",
        type=Path,
        default=COURSE_DIR,
        help=f"the course's exercises/ folder (default {COURSE_DIR})",
    )
    p.add_argument(
        "--regrade", action="store_true", help="grade again what was graded (old results are backed up)"
    )
    p.add_argument(
        "--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds a cell may run (default %(default)s)"
    )
    _add_limits(p)
    p.add_argument(
        "--jobs", type=int, default=1, help="submissions graded at a time, one process each (default 1)"
    )
    p.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="K/M",
        help="grade only shard K of M of the students (in name order: K, K+M, ...); combine the "
        "shards' grading folders with lora101 grade-merge",
    )
    p.set_defaults(func=_main)
    m = subparsers.add_parser(
        "grade-merge",
        help="merge grading folders of lora101 grade --shard K/M runs into one gradebook and scores.csv",
        description=grade_merge.__doc__,
    )
    m.add_argument("shards", type=Path, nargs="+", metavar="SHARD_DIR", help="grading folders (their --out)")
    m.add_argument("--out", type=Path, required=True, help="the merged grading folder")
    m.add_argument(
        "--course",
        type=Path,
        default=COURSE_DIR,
        help=f"the course's exercises/ folder (default {COURSE_DIR})",
    )
    m.set_defaults(func=_merge_main)


def _add_limits(p: argparse.ArgumentParser) -> None:
    """The sandbox and the time a notebook may take."""
    p.add_argument(
        "--budget",
        type=float,
        default=SUBMISSION_BUDGET_S,
        help="seconds of wall-clock time for one notebook, all cells together (default %(default)s)",
    )
    p.add_argument(
        "--memory-gb",
        type=float,
        default=SandboxLimits.memory_bytes / 2**30,
        help="memory one submission's kernel may use, in GiB (default %(default)s)",
    )
    p.add_argument(
        "--unsandboxed",
        action="store_true",
        help="run students' code without the bubblewrap sandbox (only for code you trust; scores.csv "
        "marks every submission so graded)",
    )


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _main(args) -> int:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # alembic
    out = args.out or args.submissions.resolve().parent / "graded"
    try:
        rows = grade(
            args.submissions,
            out,
            args.course,
            regrade=args.regrade,
            options=_options(args),
            jobs=args.jobs,
            shard=args.shard,
        )
    except ValueError as err:
        print(f"lora101 grade: {err}", file=sys.stderr)
        return 2
    _print_rows(rows)
    return 0


def _options(args) -> Options:
    if args.timeout <= 0:
        raise ValueError(f"--timeout {args.timeout}: give a number of seconds above 0")
    if args.budget <= 0:
        raise ValueError(f"--budget {args.budget}: give a number of seconds above 0")
    if args.memory_gb <= 0:
        raise ValueError(f"--memory-gb {args.memory_gb}: give a number of GiB above 0")
    limits = asdict(SandboxLimits(memory_bytes=int(args.memory_gb * 2**30)))
    return Options(args.timeout, sandbox=not args.unsandboxed, limits=limits, budget=args.budget)


def _merge_main(args) -> int:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # alembic
    try:
        rows = grade_merge(args.shards, args.out, args.course)
    except ValueError as err:
        print(f"lora101 grade-merge: {err}", file=sys.stderr)
        return 2
    _print_rows(rows)
    return 0


def _print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(
            f"{r['student']:>16} {r['assignment']:<20} {_number(r['score']):>6} / {_number(r['max_score'])}"
            + ("  (needs manual grading)" if r["needs_manual_grade"] else "")
            + ("" if r["status"] == "graded" else f"  {r['status']}")
            + (f"  REVIEW: {r['review']}" if r["review"] else "")
        )


def _number(value) -> str:
    return f"{value:.1f}" if isinstance(value, float | int) else "-"
