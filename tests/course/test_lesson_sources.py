"""Every lesson as a learner reads it: code cells short enough to read, and no test knobs in them.

Static checks of the notebooks' sources (nbval executes them); lesson 5's own rules are in
test_lesson5_notebook.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LESSONS = sorted(REPO.glob("lessons/*.ipynb"))
MAX_CELL_LINES = 40
# Switches for the test harness and fallbacks for other machines live in lora101.course and lora101.models.
TEST_KNOBS = ("LORA101_QUICK", "LORA101_TEST", '"mps"')


def _code_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]


def _long_cells(path: Path) -> list[str]:
    return [
        f"cell {i}: {len(source.splitlines())} lines, starting {source.splitlines()[0][:60]!r}"
        for i, source in _code_cells(path)
        if len(source.splitlines()) > MAX_CELL_LINES
    ]


def test_there_are_lessons():
    assert len(LESSONS) >= 8, [p.name for p in LESSONS]


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_no_code_cell_is_over_40_lines(path: Path):
    long = _long_cells(path)
    assert not long, f"{path.name}: split the cell, or move what teaches nothing into lora101:\n" + "\n".join(
        long
    )


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_no_test_knobs_in_lesson_cells(path: Path):
    found = [f"cell {i}: {knob}" for i, source in _code_cells(path) for knob in TEST_KNOBS if knob in source]
    assert not found, f"{path.name}:\n" + "\n".join(found)


def test_the_length_check_sees_a_long_cell(tmp_path: Path):
    cells = [
        {"cell_type": "code", "source": ["x = 1\n"] * 41},
        {"cell_type": "code", "source": ["y = 2\n"] * 40},
    ]
    notebook = tmp_path / "long.ipynb"
    notebook.write_text(json.dumps({"cells": cells}))
    assert _long_cells(notebook) == ["cell 0: 41 lines, starting 'x = 1'"]
