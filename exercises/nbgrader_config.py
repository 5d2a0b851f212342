"""nbgrader configuration of the lora101 course (run nbgrader commands from this folder).

The settings live in lora101.grading.grading_config, shared with `lora101 grade` and the tests: a cell
timeout, kernel-death recovery, restored test cells, a cap on output lines, and feedback HTML that shows
each test's result and message but not the hidden tests' code ("awaiting grading" for answers still to be
graded by hand).
"""

import os

from lora101.grading import grading_config

c = get_config()  # noqa: F821 (nbgrader provides it)
c.merge(grading_config(os.path.dirname(os.path.abspath(__file__))))
