"""Lesson 5 as a learner reads it: one fine-tune entry point, no test plumbing, answers after a prediction.

(What every lesson keeps to, such as the length of a code cell, is in tests/course/test_lesson_sources.py.)

Static checks of the notebook's source (nbval executes it; these run in a second, with no model).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

LESSON = Path(__file__).resolve().parents[2] / "lessons" / "05_qlora_finetune.ipynb"


@pytest.fixture(scope="module")
def cells() -> list[dict]:
    return json.loads(LESSON.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _code(cells: list[dict]) -> list[str]:
    return [_source(c) for c in cells if c["cell_type"] == "code"]


def test_the_fine_tune_runs_through_the_one_entry_point(cells):
    code = "\n".join(_code(cells))
    assert "ft.run(config" in code
    assert "FinetuneConfig.for_steps(" in code, "the schedule comes from the config"
    assert "save_steps=" not in code, "the lesson sets no checkpoint interval of its own"


def test_no_test_plumbing_in_lesson_cells(cells):
    for source in _code(cells):
        for word in ("LORA101_QUICK", "subprocess", '"mps"', "os.environ"):
            assert word not in source, f"{word!r} in a lesson cell:\n{source[:300]}"


def test_check_yourself_comes_before_the_summary_and_waits_for_a_prediction(cells):
    lines = [line for c in cells if c["cell_type"] == "markdown" for line in _source(c).splitlines()]
    titles = [line for line in lines if line.startswith("## ")]
    assert titles.index("## 9. Check yourself") < titles.index("## What you did")
    questions = [s for s in _code(cells) if re.match(r"# \d\. ", s)]
    assert len(questions) == 5
    for source in questions:
        assert "prediction = None" in source and "check(" in source
    check_cells = [c for c in cells if c["cell_type"] == "code" and re.match(r"# \d\. ", _source(c))]
    for cell in check_cells:  # stored outputs ask for a prediction, never show the answer
        text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        assert "Right." not in text and "Not quite" not in text
        assert not cell.get("outputs") or "write your prediction" in text


def test_the_last_cell_prints_the_compute_time_and_the_top_states_a_time(cells):
    last = _source(cells[-1])
    assert last.startswith("# NBVAL_IGNORE_OUTPUT") and "compute time" in last
    assert "**Time:**" in _source(cells[0]) and "minutes" in _source(cells[0])
