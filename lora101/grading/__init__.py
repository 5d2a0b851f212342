"""Grading the exercises: ``lora101 grade`` and ``lora101 grade-merge``.

- ``config``: nbgrader's configuration for the course (timeouts, output limits, feedback);
- ``one``: one submission autograded and its feedback written;
- ``autograde``: a class (collect, skip or set aside what was graded, serial or ``--jobs N``, scores.csv);
- ``parallel``: worker processes and shards; ``merge``: gradebooks and folders merged;
- ``feedback``: feedback HTML without the hidden tests' code.
"""

from lora101.grading.autograde import assignments, grade, grade_merge, prepare, scores, write_scores
from lora101.grading.config import CELL_TIMEOUT_S, COURSE_DIR, MAX_OUTPUT_LINES, api_for, grading_config
from lora101.grading.one import grade_one

__all__ = [
    "CELL_TIMEOUT_S",
    "COURSE_DIR",
    "MAX_OUTPUT_LINES",
    "api_for",
    "assignments",
    "grade",
    "grade_merge",
    "grade_one",
    "grading_config",
    "prepare",
    "scores",
    "write_scores",
]
