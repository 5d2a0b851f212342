"""Merging grading folders into one: the gradebook rows through nbgrader's ``Gradebook`` API, and the
``submitted/``, ``autograded/`` and ``feedback/`` folders.

Two uses, one code path: ``lora101 grade --jobs N`` merges its workers' folders (each worker grades into a
gradebook of its own, because nbgrader's SQLite gradebook must not be written by two processes at once),
and ``lora101 grade-merge`` merges the grading folders of ``--shard K/M`` runs made on several machines.

Only one process writes a grading folder's gradebook at a time: ``gradebook_lock`` (an advisory ``flock``
on ``OUT/.lora101-grade.lock``) makes a second ``lora101 grade`` or ``grade-merge`` on the same folder stop
with a clear error instead of corrupting it.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

GRADED_FOLDERS = ("submitted", "autograded", "feedback", "status")
GRADE_FIELDS = ("auto_score", "manual_score", "extra_credit", "needs_manual_grade")
MANUAL_GRADE_FIELDS = ("manual_score", "extra_credit", "needs_manual_grade")
STUDENT_FIELDS = ("first_name", "last_name", "email", "lms_user_id")


def db_url(course_root: Path) -> str:
    return f"sqlite:///{Path(course_root).resolve() / 'gradebook.db'}"


@contextlib.contextmanager
def gradebook_lock(out: Path):
    """Hold ``out``'s grading lock (released when the process ends, even by a crash)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one grading process at a time is then up to the instructor
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lora101-grade.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another lora101 grade or grade-merge is writing {out}: wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def submissions_in(course_root: Path) -> set[tuple[str, str]]:
    """(student, assignment) of every submission in grading folder ``course_root``'s gradebook."""
    from nbgrader.api import Gradebook

    root = Path(course_root).resolve()
    if not (root / "gradebook.db").is_file():
        raise ValueError(
            f"{root} has no gradebook.db: give grading folders made by lora101 grade (its --out)"
        )
    with Gradebook(db_url(root)) as gb:
        return {(sub.student.id, a.name) for a in gb.assignments for sub in a.submissions}


def merge_gradebook(src: Path, dst: Path, pairs: list[tuple[str, str]]) -> None:
    """Copy the submissions ``pairs`` (student, assignment) with every grade and comment from ``src``'s
    gradebook into ``dst``'s, replacing what ``dst`` had for them (but for hand grades ``src`` lacks: see
    ``copy_notebook_grades``). ``dst`` must already know the
    assignments (``nbgrader generate_assignment`` there)."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    with Gradebook(db_url(src)) as source, Gradebook(db_url(dst)) as target, warnings.catch_warnings():
        # nbgrader's add_submission reads the new rows before adding them to its session; SQLAlchemy warns,
        # and the rows are added right after (the merged grades are checked in tests/course/test_grading_parallel.py).
        warnings.simplefilter("ignore", SAWarning)
        for student, assignment in pairs:
            sub = source.find_submission(assignment, student)
            target.update_or_create_student(student, **{f: getattr(sub.student, f) for f in STUDENT_FIELDS})
            target.update_or_create_submission(
                assignment, student, timestamp=sub.timestamp, extension=sub.extension
            )
            for nb in sub.notebooks:
                copy_notebook_grades(nb, target.find_submission_notebook(nb.name, assignment, student))
            target.db.commit()


def copy_notebook_grades(src_nb, dst_nb) -> None:
    """Scores, flags and comments of one submitted notebook, matched by cell name. A hand grade (or comment)
    given in the target and absent from the source is kept, as nbgrader's autograde keeps it on a regrade."""
    dst_nb.flagged, dst_nb.late_submission_penalty = src_nb.flagged, src_nb.late_submission_penalty
    grades = {g.name: g for g in dst_nb.grades}
    for g in src_nb.grades:
        kept = grades[g.name].manual_score is not None and g.manual_score is None
        for field in GRADE_FIELDS:
            if not (kept and field in MANUAL_GRADE_FIELDS):
                setattr(grades[g.name], field, getattr(g, field))
    comments = {c.name: c for c in dst_nb.comments}
    for c in src_nb.comments:
        comments[c.name].auto_comment = c.auto_comment
        if c.manual_comment is not None:
            comments[c.name].manual_comment = c.manual_comment


def set_aside(out: Path, student: str, assignment: str, stamp: str, log) -> None:
    """Move ``out``'s autograded notebooks and feedback of one submission to ``ASSIGNMENT.backup-STAMP``."""
    for kind in GRADED_FOLDERS[1:]:
        folder = out / kind / student / assignment
        if folder.exists():
            backup = folder.with_name(f"{assignment}.backup-{stamp}")
            folder.rename(backup)
            log(f"moved the previous {folder.relative_to(out)} to {backup.relative_to(out)}")


def merge_folder(src: Path, out: Path, pairs: list[tuple[str, str]], stamp: str, log) -> None:
    """Merge the graded ``pairs`` of grading folder ``src`` into ``out``: gradebook rows and files.

    ``src`` is left as it was; a result already in ``out`` is set aside first (``set_aside``), never lost."""
    src, out = Path(src).resolve(), Path(out).resolve()
    for student, assignment in pairs:
        set_aside(out, student, assignment, stamp, log)
        for kind in GRADED_FOLDERS:
            source, target = src / kind / student / assignment, out / kind / student / assignment
            if kind == "submitted" and target.exists():
                shutil.rmtree(target)  # a copy of the learner's files, made by lora101 grade itself
            if source.is_dir():
                shutil.copytree(source, target)
    merge_gradebook(src, out, pairs)
