"""Grading one submission: copy it in, autograde it, write its feedback (nbgrader's API)."""

from __future__ import annotations

import shutil
from pathlib import Path


def grade_one(api, out: Path, student: str, assignment: str, notebooks: list[Path], log) -> bool:
    """Copy one submission into ``out/submitted/``, autograde it and write its feedback (nbgrader's API)."""
    target = out / "submitted" / student / assignment
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for nb in notebooks:
        shutil.copy2(nb, target / nb.name)
    log(f"autograding {student}/{assignment} ...")
    result = api.autograde(assignment, student, force=True, create=True)
    if not result["success"]:
        log(f"  autograde failed for {student}/{assignment}:\n{result['error']}")
        return False
    result = api.generate_feedback(assignment, student, force=True)
    if not result["success"]:
        log(f"  feedback failed for {student}/{assignment}:\n{result['error']}")
    return True
