"""lora101 grade on a generated class, with and without the sandbox, at each --jobs: submissions a minute.

The class: ``--learners`` learners x the course's exercises (``exercises/``), built from the source (the
reference answers) and the handout, the kinds of submission in turn: correct (the reference answers),
partial (the first half of the answer cells answered, the rest as handed out), broken (the untouched handout
plus a syntax error) and hostile (a cell that kills its kernel, an infinite loop that waits for the cell
timeout, every test cell edited to pass). Each ``--jobs`` value grades the whole class into a fresh folder,
in the sandbox and without it one right after the other (``--sandbox both``), so that the sandbox's cost is
measured at the same load; every run's scores must be identical (checked and printed). The projection for 300 learners multiplies
the measured seconds per submission (same mix of kinds, same machine). Timings on a shared machine are
noisy: the load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from tqdm.auto import tqdm

from lora101.bench._options import integers, positive
from lora101.errors import OptionError
from lora101.grading import CELL_TIMEOUT_S, COURSE_DIR, assignments, grade
from lora101.grading.config import Options
from lora101.grading.sandbox import sandbox_problem

KINDS = ("correct", "partial", "broken", "hostile")
PROJECTED_LEARNERS = 300


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--learners", type=int, default=2, help="learners in the class (default 2; try 40)")
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values to time (default 1,2)")
    parser.add_argument(
        "--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds a cell may run (default %(default)s)"
    )
    parser.add_argument("--course", type=Path, default=COURSE_DIR, help="the course's exercises/ folder")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the class and grading folders here")
    parser.add_argument(
        "--sandbox",
        choices=("both", "on", "off"),
        default="both",
        help="grade in the sandbox, without it, or both side by side (default both)",
    )


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def learner_notebook(course: Path, assignment: str, kind: str):
    """One submission of ``kind`` for ``assignment``, made from the course's release and source notebooks."""
    release = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    source = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    answers = {_meta(c)["grade_id"]: c.source for c in source.cells if _meta(c).get("solution")}
    nb = copy.deepcopy(release)
    solution_cells = [c for c in nb.cells if _meta(c).get("solution")]
    answered = solution_cells[: len(solution_cells) // 2] if kind == "partial" else solution_cells
    if kind != "broken":
        for cell in answered:
            cell.source = answers[_meta(cell)["grade_id"]]
    if kind == "broken":
        nb.cells.append(nbformat.v4.new_code_cell("def broken(:\n    pass"))
    if kind == "hostile":
        for cell in nb.cells:
            if _meta(cell).get("grade") and not _meta(cell).get("solution"):
                cell.source = "pass  # all good"
        nb.cells.insert(2, nbformat.v4.new_code_cell("import os\nos._exit(1)"))
        nb.cells.insert(3, nbformat.v4.new_code_cell("while True:\n    pass"))
    return nb


def make_class(course: Path, folder: Path, learners: int) -> int:
    """Write the class to ``folder/LEARNER/ASSIGNMENT/ASSIGNMENT.ipynb``; returns the number of submissions."""
    names = assignments(course)
    for i in range(learners):
        for j, a in enumerate(names):
            target = folder / f"learner{i:03d}" / a
            target.mkdir(parents=True)
            nbformat.write(
                learner_notebook(course, a, KINDS[(i * len(names) + j) % len(KINDS)]), target / f"{a}.ipynb"
            )
    return learners * len(names)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _parse(args) -> tuple[list[int], list[bool]]:
    jobs = integers(args.jobs, "--jobs", 1, 64)
    positive(args, "learners", "timeout")
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.sandbox]
    if True in modes and sandbox_problem():
        raise OptionError("--sandbox", f"{sandbox_problem()} (or pass --sandbox off)")
    return jobs, modes


def _grade_once(work: Path, course: Path, j: int, sandboxed: bool, timeout: int) -> tuple[float, set]:
    out = work / f"graded-jobs{j}-{'sandbox' if sandboxed else 'plain'}"
    start = time.perf_counter()
    rows = grade(
        work / "class",
        out,
        course,
        options=Options(cell_timeout=timeout, sandbox=sandboxed),
        jobs=j,
        log=lambda line: None,
    )
    return time.perf_counter() - start, {(r["student"], r["assignment"], r["score"]) for r in rows}


def run(args) -> int:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")  # alembic
    jobs, modes = _parse(args)
    course = args.course.resolve()
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        raise OptionError("--workdir", f"{args.workdir} is not empty: give a new folder")
    with tempfile.TemporaryDirectory(prefix="lora101-bench-grade-") as tmp:
        work = args.workdir or Path(tmp)
        n = make_class(course, work / "class", args.learners)
        per_learner = len(assignments(course))
        print(
            f"class: {args.learners} learners x {per_learner} exercises = {n} submissions "
            f"({', '.join(KINDS)} in turn); cell timeout {args.timeout} s; {os.cpu_count()} CPUs"
        )
        rows, scores = [], {}
        for j in tqdm(jobs, desc="--jobs values"):
            for sandboxed in modes:  # side by side, so both see the same load
                load = os.getloadavg()[0]
                seconds, scores[(j, sandboxed)] = _grade_once(work, course, j, sandboxed, args.timeout)
                rows.append((j, sandboxed, seconds, load, os.getloadavg()[0]))
    _print_table(rows, n, per_learner)
    same = len({frozenset(s) for s in scores.values()}) == 1
    print(f"\nscores identical across runs: {'yes' if same else 'NO'}")
    return 0 if same else 1


def _print_table(rows: list, n: int, per_learner: int) -> None:
    plain = {j: seconds for j, sandboxed, seconds, _, _ in rows if not sandboxed}
    print(
        f"\n{'jobs':>4} {'sandbox':>7} {'seconds':>8} {'subs/min':>8} {'sandbox cost':>12} {'300 learners':>12} "
        f"{'load before/after':>18}"
    )
    for j, sandboxed, seconds, before, after in rows:
        projected = seconds / n * PROJECTED_LEARNERS * per_learner
        cost = f"{seconds / plain[j] - 1:+.0%}" if sandboxed and j in plain else ""
        print(
            f"{j:>4} {'on' if sandboxed else 'off':>7} {seconds:8.1f} {n / seconds * 60:8.2f} {cost:>12} "
            f"{_duration(projected):>12} {before:8.1f} / {after:<8.1f}"
        )
