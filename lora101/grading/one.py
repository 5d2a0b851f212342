"""Grading one submission: copy it in, autograde it, write its feedback, then record its status.

The status (``OUT/status/STUDENT/ASSIGNMENT/status.json``) is written last, by the grader: a submission
counts as graded only once its scores are in the gradebook and its feedback is written, so a run that was
interrupted grades it again. It says whether the kernel ran in the sandbox, and what needs the
instructor's review (tampering signs, a kernel that died twice, a blank written answer), and, for a
submission that could not be graded, why (the tail of nbgrader's log).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from pathlib import Path

from lora101.grading.merge import db_url

STATUS = "status"
LOG_TAIL_LINES = 15
ERROR_LINE = re.compile(r"^\s*[\w.]*(Error|Exception|Interrupt)\b.*:")


def status_path(out: Path, student: str, assignment: str) -> Path:
    return Path(out) / STATUS / student / assignment / "status.json"


def read_status(out: Path, student: str, assignment: str) -> dict | None:
    path = status_path(out, student, assignment)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_status(out: Path, student: str, assignment: str, **status) -> None:
    path = status_path(out, student, assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1))
    tmp.replace(path)  # never half written


@contextlib.contextmanager
def _quiet_sqlalchemy():
    """nbgrader's gradebook code makes SQLAlchemy warn that rows are "not in session" when it adds a
    submission (and then adds them): noise in an instructor's log about nothing they can act on."""
    from sqlalchemy.exc import SAWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)
        yield


def _tail(text: str) -> str:
    """The end of nbgrader's log, ending on the error that stopped it (not nbgrader's "see the above
    traceback", which would be the last line and is all scores.csv keeps)."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    causes = [i for i, line in enumerate(lines) if ERROR_LINE.match(line) and "NbGraderException" not in line]
    end = causes[-1] + 1 if causes else len(lines)
    return "\n".join(lines[max(0, end - LOG_TAIL_LINES) : end])


def _findings(out: Path, student: str, assignment: str) -> list[str]:
    """What the executor recorded in the autograded notebooks' metadata (``lora101.grading.execute``)."""
    import nbformat  # here, not at the top: it takes seconds to import and ``lora101 --help`` needs none

    review = []
    for path in sorted((out / "autograded" / student / assignment).glob("*.ipynb")):
        meta = nbformat.read(path, as_version=4).metadata.get("lora101", {})
        review.extend(f"{path.stem}: {why}" for why in meta.get("review", []))
    return review


def grade_one(
    api, out: Path, student: str, assignment: str, notebooks: list[Path], log, sandboxed: bool = True
) -> bool:
    """Copy one submission into ``out/submitted/``, autograde it, write its feedback and its status."""
    target = out / "submitted" / student / assignment
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for nb in notebooks:
        shutil.copyfile(nb, target / nb.name)  # contents only: no links, no permissions carried over
    log(f"autograding {student}/{assignment} ...")
    with _quiet_sqlalchemy():
        result = api.autograde(assignment, student, force=True, create=True)
    if not result["success"]:
        why = _tail(result.get("log", "") + "\n" + (result.get("error") or ""))
        log(f"  autograde failed for {student}/{assignment}:\n{why}")
        write_status(out, student, assignment, status="failed", reason=why, sandboxed=sandboxed, review=[])
        return False
    review = _findings(out, student, assignment) + _fix_hand_grading(out, student, assignment)
    with _quiet_sqlalchemy():
        result = api.generate_feedback(assignment, student, force=True)
    if not result["success"]:
        log(f"  feedback failed for {student}/{assignment}:\n{_tail(result.get('error') or '')}")
    _keep_only_html(out / "feedback" / student / assignment)
    for why in review:
        log(f"  review {student}/{assignment}: {why}")
    write_status(out, student, assignment, status="graded", reason="", sandboxed=sandboxed, review=review)
    return True


def _blank_answers(out: Path, student: str, assignment: str) -> dict[str, list[str]]:
    """notebook name -> grade ids of hand-graded answers left as released (nbgrader scores them 0)."""
    import nbformat
    from nbgrader.utils import compute_checksum, is_grade, is_solution

    blank = {}
    for path in sorted((out / "autograded" / student / assignment).glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        blank[path.stem] = [
            c.metadata.nbgrader["grade_id"]
            for c in cells
            if is_grade(c) and is_solution(c) and c.metadata.nbgrader.get("checksum") == compute_checksum(c)
        ]
    return blank


def _fix_hand_grading(out: Path, student: str, assignment: str) -> list[str]:
    """After autograde: a blank written answer waits for a hand grade (not a silent 0), and a hand grade
    given before a regrade stays final (nbgrader would ask for it again). Returns review reasons."""
    from nbgrader.api import Gradebook

    review = []
    blank = _blank_answers(out, student, assignment)
    with Gradebook(db_url(out)) as gb:
        for nb in gb.find_submission(assignment, student).notebooks:
            for grade in nb.grades:
                if grade.manual_score is not None:
                    grade.needs_manual_grade = False
                elif grade.name in blank.get(nb.name, []):
                    grade.needs_manual_grade = True
                    review.append(f"{nb.name}: {grade.name} was left blank: give it a hand grade")
        gb.db.commit()
    return review


def _keep_only_html(folder: Path) -> None:
    """Feedback is the HTML the grader wrote: files that came with the submission are not handed back."""
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        elif item.suffix != ".html":
            item.unlink()
