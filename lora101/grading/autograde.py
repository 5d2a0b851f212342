"""Grading the exercises with nbgrader, without a Jupyter server or a shared exchange directory.

``lora101 grade SUBMISSIONS_DIR`` takes a folder of learners' notebooks laid out as
``SUBMISSIONS_DIR/STUDENT/ASSIGNMENT/NOTEBOOK.ipynb`` (or ``SUBMISSIONS_DIR/STUDENT/NOTEBOOK.ipynb``, the
assignment found from the notebook's name), copies them into a grading folder (an nbgrader course directory
with its gradebook), autogrades them, writes feedback HTML and a CSV of scores.

A whole class: ``--jobs N`` grades N submissions at a time, each worker process in a grading folder of its
own, merged into the main gradebook at the end (nbgrader's SQLite gradebook takes one writer at a time);
``--shard K/M`` grades one M-th of the students, and ``lora101 grade-merge SHARD_DIR... --out OUT`` merges
the shards' grading folders (from several machines) with the same code. The scores are those of a serial
run (``lora101.grading.parallel``, ``lora101.grading.merge``).

Robustness (``grading_config``): each cell has a timeout and is interrupted when it runs out; a cell that
kills its kernel (``os._exit``) gets an error output and the kernel is restarted with the cells above it
re-run, so the rest of the notebook is still graded (``robust_execute()``); test cells a learner edited or
deleted are restored from the source (``OverwriteCells``, with missing cells added back); output is cut to
``max_output_lines`` lines a cell. Feedback HTML shows each test's result and message but not the hidden
tests' code, and "awaiting grading" for answers not yet graded by hand (``lora101.grading.feedback``).

Nothing an instructor made is overwritten silently: if a student's assignment was already autograded in
the grading folder, it is skipped and reported unless ``--regrade`` is given; with ``--regrade``, the old
autograded notebooks and feedback are moved aside to a time-stamped backup first, and manual grades in the
gradebook are kept (nbgrader's autograde updates only the automatic scores).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from pathlib import Path

from lora101.grading.collect import collect
from lora101.grading.config import COURSE_DIR, DEFAULT_OPTIONS, Options, api_for
from lora101.grading.merge import gradebook_lock, merge_folder, set_aside, submissions_in
from lora101.grading.one import STATUS, grade_one, read_status
from lora101.grading.parallel import grade_in_parallel, select_shard
from lora101.grading.sandbox import open_model_cache, sandbox_problem


def assignments(course_root: Path) -> list[str]:
    """The assignment names: folders of ``source/`` holding a notebook."""
    return sorted(p.name for p in (Path(course_root) / "source").iterdir() if any(p.glob("*.ipynb")))


def grade(
    submissions: Path,
    out: Path,
    course: Path = COURSE_DIR,
    regrade: bool = False,
    options: Options = DEFAULT_OPTIONS,
    log=print,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
) -> list[dict]:
    """Collect, autograde and write feedback for every submission under ``submissions``; returns score rows.

    ``out`` becomes an nbgrader course folder (``source/`` copied from ``course``, ``submitted/``,
    ``autograded/``, ``feedback/``, ``status/``, ``gradebook.db``) and gets ``scores.csv``. ``options``: the
    per-cell timeout, the sandbox (refused with the reason where none can be made, unless
    ``options.sandbox`` is False: ``--unsandboxed``), its limits and the notebook's time budget. ``jobs`` > 1
    grades that many submissions at a time (``lora101.grading.parallel``); ``shard=(K, M)`` grades only
    shard K of M of the students (``select_shard``), for ``grade_merge`` to combine.
    """
    submissions, out, course = Path(submissions).resolve(), Path(out).resolve(), Path(course).resolve()
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: give 1 or more")
    _check_sandbox(options)
    names = _check_course(course)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with gradebook_lock(out):
        private = Path(tempfile.mkdtemp(prefix=".incoming-", dir=out))
        try:
            found = collect(submissions, course, names, private, log)
            if shard:
                found = select_shard(found, *shard)
                log(
                    f"shard {shard[0]}/{shard[1]}: {len({s for s, _ in found})} students, {len(found)} submissions"
                )
            todo = _make_room(found, out, regrade, stamp, log)
            api = prepare(out, course, {a for _, a in todo}, options)
            if jobs > 1 and len(todo) > 1:
                grade_in_parallel(out, todo, min(jobs, len(todo)), options, stamp, log)
            else:
                for (student, assignment), notebooks in todo.items():
                    grade_one(api, out, student, assignment, notebooks, log, options.sandbox)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        return write_scores(out, log)


def _check_sandbox(options: Options) -> None:
    if not options.sandbox:
        return
    problem = sandbox_problem()
    if problem:
        raise ValueError(
            f"no grading sandbox can be made here: {problem}. A submission is code from someone else: "
            "grade on Linux with bubblewrap, or, for code you trust, pass --unsandboxed (scores.csv then "
            "marks every submission so graded)"
        )
    open_model_cache()


def _check_course(course: Path) -> list[str]:
    if not (course / "source").is_dir():
        raise ValueError(f"--course {course} has no source/ folder: give the course's exercises/ folder")
    return assignments(course)


def _make_room(found: dict, out: Path, regrade: bool, stamp: str, log) -> dict:
    """The submissions to grade: those not graded in ``out`` yet (no status saying so: an interrupted run
    grades them again), or all with ``regrade`` (old results set aside to ``ASSIGNMENT.backup-STAMP``)."""
    todo = {}
    for (student, assignment), notebooks in found.items():
        status = read_status(out, student, assignment) or {}
        if status.get("status") == "graded" and not regrade:
            log(f"skip {student}/{assignment}: already graded in {out} (use --regrade to grade it again)")
            continue
        set_aside(out, student, assignment, stamp, log)
        todo[(student, assignment)] = notebooks
    return todo


def prepare(out: Path, course: Path, names: set[str], options: Options = DEFAULT_OPTIONS):
    """Make ``out`` a grading folder for assignments ``names`` (source copied, generate_assignment run, so
    the gradebook knows them); returns its nbgrader API."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(course / "source", out / "source", dirs_exist_ok=True)
    api = api_for(out, **options.api_kwargs())
    for assignment in sorted(names):
        result = api.generate_assignment(assignment, force=True)
        if not result["success"]:
            raise RuntimeError(f"generate_assignment {assignment} failed:\n{result['log']}{result['error']}")
    return api


def grade_merge(shards: list[Path], out: Path, course: Path = COURSE_DIR, log=print) -> list[dict]:
    """Merge the grading folders ``shards`` (``lora101 grade --shard K/M --out ...`` on several machines)
    into ``out``: gradebook, submitted/autograded/feedback folders and ``scores.csv``. The shards are only
    read; a result already in ``out`` is set aside first, as ``--regrade`` does."""
    out, course = Path(out).resolve(), Path(course).resolve()
    _check_course(course)
    found = {Path(shard).resolve(): sorted(submissions_in(shard)) for shard in shards}
    if out in found:
        raise ValueError(f"--out {out} is one of the shards: merge into a new folder")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with gradebook_lock(out):
        prepare(out, course, {a for pairs in found.values() for _, a in pairs})
        for shard, pairs in found.items():
            log(f"merging {len(pairs)} submissions from {shard}")
            merge_folder(shard, out, pairs, stamp, log)
        return write_scores(out, log)


SCORE_FIELDS = [
    "student",
    "assignment",
    "score",
    "max_score",
    "needs_manual_grade",
    "status",
    "sandboxed",
    "review",
]


def write_scores(out: Path, log) -> list[dict]:
    """``scores.csv`` rebuilt from the gradebook and the submissions' status files (never edited in place)."""
    rows = scores(out)
    tmp = out / "scores.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SCORE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "scores.csv")
    flagged = sum(1 for r in rows if r["review"])
    log(
        f"wrote {out / 'scores.csv'} ({len(rows)} rows, {flagged} for review); feedback HTML in {out / 'feedback'}"
    )
    return rows


def scores(course_root: Path) -> list[dict]:
    """One row per (student, assignment) that was graded or failed: the gradebook's scores with the
    submission's status (graded / failed: why), whether it ran in the sandbox, and what needs review."""
    from nbgrader.api import Gradebook

    root = Path(course_root).resolve()
    rows = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for assignment in gb.assignments:
            for sub in assignment.submissions:
                rows[(sub.student.id, assignment.name)] = dict(
                    student=sub.student.id,
                    assignment=assignment.name,
                    score=sub.score,
                    max_score=sub.max_score,
                    needs_manual_grade=sub.needs_manual_grade,
                )
    for path in sorted((root / STATUS).glob("*/*/status.json")):
        student, assignment = path.parent.parent.name, path.parent.name
        if ".backup-" in assignment:  # a status set aside by --regrade with its old results
            continue
        status = read_status(root, student, assignment) or {}
        row = rows.setdefault(
            (student, assignment),
            dict(student=student, assignment=assignment, score="", max_score="", needs_manual_grade=""),
        )
        state = status.get("status", "")
        last = (status.get("reason") or "unknown").strip().splitlines()[-1:] or ["unknown"]
        row["status"] = f"failed: {last[0]}" if state == "failed" else state
        row["sandboxed"] = "yes" if status.get("sandboxed") else "NO (--unsandboxed)"
        row["review"] = "; ".join(status.get("review", []))
    for row in rows.values():
        row.setdefault("status", "graded (no status: graded before lora101 kept one)")
        row.setdefault("sandboxed", "unknown")
        row.setdefault("review", "")
    return sorted(rows.values(), key=lambda r: (r["student"], r["assignment"]))
