"""Ordinary mistakes fail soft, suspicious submissions are refused by name, and what an instructor did is
kept: renamed and flat copies, links and pattern characters, deleted or duplicated cells, stripped
metadata, a kernel that dies twice, an interrupted run, hand grades across a regrade, blank written
answers, and no sandbox at all."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook
from tiny_course import make_course, submission

from lora101.grading import grade, sandbox
from lora101.grading.config import Options
from lora101.grading.merge import db_url
from lora101.grading.one import status_path

A = "a1_double"
OPTIONS = Options(cell_timeout=10, budget=120, sandbox=sandbox.sandbox_problem() is None)


def _write(root, rel: str, nb) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    course, subs = make_course(root / "course"), root / "subs"
    correct = submission(A, "correct")
    _write(subs, f"renamed/{A}/{A}-Copy1.ipynb", correct)
    _write(subs, f"both/{A}/{A}.ipynb", correct)
    _write(subs, f"both/{A}.ipynb", submission(A, "broken"))
    _write(subs, f"flat/{A}.ipynb", correct)
    deleted = copy.deepcopy(correct)
    del deleted.cells[2]  # the test cell: restored from the source
    _write(subs, f"deleted/{A}/{A}.ipynb", deleted)
    duplicated = copy.deepcopy(correct)
    duplicated.cells.insert(2, copy.deepcopy(correct.cells[1]))
    _write(subs, f"duplicated/{A}/{A}.ipynb", duplicated)
    stripped = copy.deepcopy(correct)
    for cell in stripped.cells:
        cell.metadata = {}
    _write(subs, f"stripped/{A}/{A}.ipynb", stripped)
    dies = copy.deepcopy(correct)
    for _ in range(2):
        dies.cells.insert(1, nbformat.v4.new_code_cell("import os\nos._exit(1)"))
    _write(subs, f"dies_twice/{A}/{A}.ipynb", dies)
    _write(subs, f"blank/{A}/{A}.ipynb", submission(A, "broken"))
    _write(root / "elsewhere", f"linked/{A}/{A}.ipynb", correct)
    os.symlink(root / "elsewhere" / "linked", subs / "linked")
    _write(subs, f"bob[1]/{A}/{A}.ipynb", correct)
    lines: list[str] = []
    rows = grade(subs, root / "out", course, options=OPTIONS, log=lines.append)
    return root, {r["student"]: r for r in rows}, "\n".join(lines)


def test_renamed_and_flat_copies_are_graded(graded):
    _, rows, log = graded
    assert rows["renamed"]["score"] == 3.0 and f"{A}-Copy1.ipynb graded as {A}.ipynb" in log
    assert rows["flat"]["score"] == 3.0
    assert rows["both"]["score"] == 3.0, "the foldered copy wins"
    assert f"both: {A}.ipynb ignored ({A}/ is graded)" in log


def test_links_and_pattern_names_are_refused_by_name(graded):
    _, rows, log = graded
    assert "linked" not in rows and "refused linked: the submission holds a symbolic link" in log
    assert "bob[1]" not in rows and "refused 'bob[1]'" in log


def test_deleted_duplicated_and_stripped_cells(graded):
    _, rows, log = graded
    assert rows["deleted"]["score"] == 3.0, "a deleted test cell is restored from the source"
    assert rows["duplicated"]["score"] == 3.0 and rows["stripped"]["score"] == 3.0, (rows, log)
    assert f"duplicated/{A}: cell 2 repeats graded cell 'answer': the first one is graded" in log
    assert f"stripped/{A}: the notebook had lost its nbgrader metadata: restored from the handout" in log


def test_a_kernel_that_dies_twice_stops_and_is_flagged(graded):
    _, rows, _ = graded
    assert rows["dies_twice"]["status"] == "graded"
    assert "the kernel died 2 times" in rows["dies_twice"]["review"]


def test_a_blank_written_answer_waits_for_a_hand_grade(graded):
    root, rows, _ = graded
    assert "written was left blank" in rows["blank"]["review"]
    with Gradebook(db_url(root / "out")) as gb:
        assert gb.find_grade("written", A, A, "blank").needs_manual_grade


def test_hand_grades_survive_a_regrade_and_scores_csv_follows_the_gradebook(graded, tmp_path):
    root, _, _ = graded
    out = root / "out"
    with Gradebook(db_url(out)) as gb:
        grade_row = gb.find_grade("written", A, A, "flat")
        grade_row.manual_score = 1.5
        gb.db.commit()
    status_path(out, "renamed", A).unlink()  # as if the run had stopped before saving this one
    lines: list[str] = []
    rows = {
        r["student"]: r for r in grade(root / "subs", out, root / "course", options=OPTIONS, log=lines.append)
    }
    log = "\n".join(lines)
    assert "autograding renamed/" in log, "a submission without its status is graded again"
    assert "skip flat/" in log
    grade(root / "subs", out, root / "course", regrade=True, options=OPTIONS, log=lines.append)
    with Gradebook(db_url(out)) as gb:
        kept = gb.find_grade("written", A, A, "flat")
        assert kept.manual_score == 1.5 and not kept.needs_manual_grade
    assert rows["flat"]["score"] == 3.0 + 1.5
    csv_text = (out / "scores.csv").read_text()
    assert "flat,a1_double,4.5,5.0" in csv_text


def test_no_sandbox_means_a_refusal_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    sandbox.sandbox_problem.cache_clear()
    try:
        course = make_course(tmp_path / "course")
        _write(tmp_path / "subs", f"ada/{A}/{A}.ipynb", submission(A, "correct"))
        with pytest.raises(ValueError, match="bubblewrap.*--unsandboxed"):
            grade(tmp_path / "subs", tmp_path / "out", course, options=Options(cell_timeout=10), log=print)
    finally:
        sandbox.sandbox_problem.cache_clear()


def test_bad_timeouts_are_one_line_errors(tmp_path):
    for option in (["--timeout", "0"], ["--timeout", "-5"], ["--budget", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "lora101.cli", "grade", str(tmp_path), *option],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().count("\n") == 0 and option[0] in done.stderr, done.stderr


def test_a_worker_that_dies_fails_only_its_submission(tmp_path):
    """Unsandboxed (the only way a kernel can reach its grader), a kernel that kills its worker process
    costs that submission, after one retry, and nobody else's grade."""
    course, subs = make_course(tmp_path / "course"), tmp_path / "subs"
    killer = submission(A, "correct")
    killer.cells.insert(
        1, nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    )
    _write(subs, f"mallory/{A}/{A}.ipynb", killer)
    for student in ("ada", "zoe"):
        _write(subs, f"{student}/{A}/{A}.ipynb", submission(A, "correct"))
    lines: list[str] = []
    options = Options(cell_timeout=10, sandbox=False)
    rows = {
        r["student"]: r
        for r in grade(subs, tmp_path / "out", course, options=options, jobs=2, log=lines.append)
    }
    assert rows["ada"]["score"] == 3.0 and rows["zoe"]["score"] == 3.0, rows
    assert rows["mallory"]["status"].startswith("failed: the grading worker process died"), rows["mallory"]
