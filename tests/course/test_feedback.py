"""Feedback HTML from `lora101 grade` (and the course's nbgrader config): each test's result and message,
never the hidden tests' code; answers still waiting for a hand grade read "awaiting grading".

Rendered for real (nbgrader's autograde and generate_feedback) on tiny_course, whose test cell has a hidden
test with a distinctive line (``HIDDEN_CODE``) and message (``HIDDEN_MESSAGE``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat
import pytest
from nbconvert.exporters import HTMLExporter
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.api import Gradebook
from nbgrader.preprocessors import GetGrades
from tiny_course import HIDDEN_CODE, HIDDEN_MESSAGE, make_course, submission
from traitlets.config.loader import PyFileConfigLoader

from lora101.grading import COURSE_DIR, api_for, grade
from lora101.grading.config import Options
from lora101.grading.feedback import HIDDEN_PLACEHOLDER, feedback_exporter, hide_hidden_tests, preprocessors
from lora101.grading.merge import db_url

A = "a1_double"


def _text(path: Path) -> str:
    """The feedback page's visible text (tags dropped, entities decoded, whitespace squeezed)."""
    page = path.read_text()
    page = re.sub(r"<(style|script)\b.*?</\1>", " ", page[page.find("<body") :], flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One learner whose answer passes the visible test and fails the hidden one, written answer ungraded."""
    root = tmp_path_factory.mktemp("feedback")
    course = make_course(root / "course")
    (root / "subs" / "ada" / A).mkdir(parents=True)
    nbformat.write(submission(A, "partial"), root / "subs" / "ada" / A / f"{A}.ipynb")
    grade(root / "subs", root / "out", course, options=Options(cell_timeout=10), log=lambda line: None)
    return root / "out"


def test_feedback_keeps_the_message_but_not_the_hidden_code(graded):
    text = _text(graded / "feedback" / "ada" / A / f"{A}.html")
    assert HIDDEN_MESSAGE in text, "the failing hidden test's message is shown"
    assert "AssertionError" in text
    assert "_zebra_probe" not in text and HIDDEN_CODE not in text, "the hidden test's code is not shown"
    assert "HIDDEN TESTS" not in text
    assert "double(2) is wrong" in text, "the visible test's code is shown, as in the handout"
    assert HIDDEN_PLACEHOLDER.lstrip("# ") in text
    assert f"{A} (Score: 0.0 / 5.0; 2.0 points awaiting grading)" in text
    assert "Test cell (Score: 0.0 / 3.0)" in text
    # The written answer: awaiting grading, in the table of contents and in the cell's heading.
    assert text.count("awaiting grading, 2.0 points") == 2, text
    assert "/ 2.0" not in text
    autograded = (graded / "autograded" / "ada" / A / f"{A}.ipynb").read_text()
    assert "_zebra_probe" in autograded, "the instructor's autograded notebook keeps everything"


def test_a_hand_grade_replaces_awaiting_grading(graded):
    with Gradebook(db_url(graded)) as gb:
        g = gb.find_grade("written", A, A, "ada")
        g.manual_score, g.needs_manual_grade = 1.5, False
        gb.db.commit()
    result = api_for(graded).generate_feedback(A, "ada", force=True)
    assert result["success"], result["log"]
    text = _text(graded / "feedback" / "ada" / A / f"{A}.html")
    assert "awaiting grading" not in text
    assert "Written response (Score: 1.5 / 2.0)" in text and f"{A} (Score: 1.5 / 5.0)" in text


def test_nbgrader_alone_would_show_the_hidden_code(graded, tmp_path):
    """The control: nbgrader's own feedback (its preprocessors and template) leaks the hidden test."""
    api = api_for(graded)
    api.config.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor]
    api.config.GenerateFeedback.exporter_class = HTMLExporter
    api.coursedir.feedback_directory = str(tmp_path / "plain")
    result = api.generate_feedback(A, "ada", force=True)
    assert result["success"], result["log"]
    html_files = list((tmp_path / "plain").rglob("*.html"))
    assert html_files and "_zebra_probe" in _text(html_files[0])


def test_the_course_config_uses_the_same_feedback():
    """`nbgrader generate_feedback` run in exercises/ gets the same preprocessors and template."""
    config = PyFileConfigLoader("nbgrader_config.py", path=str(COURSE_DIR)).load_config()
    assert config.GenerateFeedback.exporter_class is feedback_exporter()
    assert config.GenerateFeedback.preprocessors[: len(preprocessors())] == preprocessors()


def test_hide_hidden_tests():
    source = "check(1)\n    ### BEGIN HIDDEN TESTS\n    check(2)\n    ### END HIDDEN TESTS\ncheck(3)"
    assert hide_hidden_tests(source) == f"check(1)\n    {HIDDEN_PLACEHOLDER}\ncheck(3)"
    assert hide_hidden_tests("a\n### BEGIN HIDDEN TESTS\nb") == f"a\n{HIDDEN_PLACEHOLDER}", (
        "unclosed: all hidden"
    )
    assert hide_hidden_tests("a\nb") == "a\nb"
