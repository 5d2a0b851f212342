"""A two-assignment nbgrader course that grades in seconds (no torch), and a class of submissions for it.

The grading machinery (``lora101.grading``) does not care what the exercises teach; the real exercises are
graded end to end in ``tests/course/test_exercises_nbgrader.py``. Each assignment has an answer cell, a test cell
with visible and hidden tests (points 3) and a written answer graded by hand (points 2).
"""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat

# Distinctive strings: the hidden tests' source must never reach the feedback, their messages must.
HIDDEN_CODE = "_zebra_probe = -3"
HIDDEN_MESSAGE = "must also work for negative numbers"

ANSWERS = {"a1_double": ("double", "2 * x"), "a2_triple": ("triple", "3 * x")}


def _cell(kind: str, source: str, grade_id: str, **flags):
    meta = {
        "grade": False,
        "solution": False,
        "locked": False,
        "schema_version": 3,
        "grade_id": grade_id,
        **flags,
    }
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    cell.metadata["nbgrader"] = meta
    return cell


def source_notebook(assignment: str):
    name, body = ANSWERS[assignment]
    test = (
        f'assert {name}(2) == {body.replace("x", "2")}, "{name}(2) is wrong"\n'
        "### BEGIN HIDDEN TESTS\n"
        f"{HIDDEN_CODE}\n"
        f'assert {name}(_zebra_probe) == {body.replace("x", "_zebra_probe")}, "{name}() {HIDDEN_MESSAGE}"\n'
        "### END HIDDEN TESTS"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        _cell("markdown", f"# {assignment}", "title", locked=True),
        _cell(
            "code",
            f"def {name}(x):\n    ### BEGIN SOLUTION\n    return {body}\n    ### END SOLUTION",
            "answer",
            solution=True,
        ),
        _cell("code", test, "test_answer", grade=True, locked=True, points=3),
        _cell("markdown", "Why?", "q_written", locked=True),
        _cell("markdown", "YOUR ANSWER HERE", "written", grade=True, solution=True, points=2),
    ]
    return nb


def make_course(root: Path) -> Path:
    for a in ANSWERS:
        (root / "source" / a).mkdir(parents=True)
        nbformat.write(source_notebook(a), root / "source" / a / f"{a}.ipynb")
    return root


def submission(assignment: str, kind: str):
    """A learner's notebook: ``correct``, ``partial`` (passes the visible test, fails the hidden one),
    ``broken`` (the untouched handout) or ``hostile`` (kills its kernel, loops forever, edits the test)."""
    name, body = ANSWERS[assignment]
    nb = copy.deepcopy(source_notebook(assignment))
    answer, test = nb.cells[1], nb.cells[2]
    test.source = test.source.split("### BEGIN HIDDEN TESTS")[0].strip()
    nb.cells[4].source = "Because it is linear."
    if kind == "partial":
        answer.source = f"def {name}(x):\n    return abs({body})"
    elif kind == "broken":
        answer.source = f"def {name}(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
        nb.cells[4].source = "YOUR ANSWER HERE"
    elif kind == "hostile":
        test.source = "pass  # all good"
        nb.cells.insert(1, nbformat.v4.new_code_cell("import os\nos._exit(1)"))
        nb.cells.insert(2, nbformat.v4.new_code_cell("while True:\n    pass"))
    elif kind != "correct":
        raise ValueError(f"kind {kind!r}")
    return nb


KINDS = ("correct", "partial", "broken", "hostile")


def make_class(root: Path, learners: int) -> dict[tuple[str, str], str]:
    """``learners`` students x both assignments in ``root/STUDENT/ASSIGNMENT/ASSIGNMENT.ipynb``, the kinds in
    turn (two learners make one of each); returns (student, assignment) -> kind."""
    kinds = {}
    for i in range(learners):
        for j, a in enumerate(ANSWERS):
            kind = KINDS[(len(ANSWERS) * i + j) % len(KINDS)]
            folder = root / f"learner{i:02d}" / a
            folder.mkdir(parents=True)
            nbformat.write(submission(a, kind), folder / f"{a}.ipynb")
            kinds[(f"learner{i:02d}", a)] = kind
    return kinds
