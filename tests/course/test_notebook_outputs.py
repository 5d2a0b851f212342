"""The outputs stored in the notebooks are what nbval compares a fresh run against, on another machine
and at another path. Outputs that can only match on the machine that stored them make CI fail for
reasons a learner never sees, so they are caught here, with the notebook and cell named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(
    [
        *REPO.glob("lessons/*.ipynb"),
        *REPO.glob("exercises/source/*/*.ipynb"),
        *REPO.glob("exercises/release/*/*.ipynb"),
    ]
)
# An absolute path of this checkout, a virtual environment or a home folder in an output.
MACHINE_PATH = re.compile(r"site-packages|/\.venv/|/home/\w+|/root/|" + re.escape(str(REPO)))


def _compared_cells(path: Path):
    """(index, cell) of the code cells whose outputs nbval compares."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        if "NBVAL_IGNORE_OUTPUT" in source or "NBVAL_SKIP" in source:
            continue
        yield index, cell


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return "".join(output["text"])
    return "".join(output.get("data", {}).get("text/plain", ""))


def _problems(path: Path) -> list[str]:
    problems = []
    for index, cell in _compared_cells(path):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                problems.append(f"code cell {index}: a stored error ({output.get('ename')})")
            elif output["output_type"] == "stream" and output["name"] == "stderr":
                first = _text(output).strip().splitlines()[:1]
                problems.append(
                    f"code cell {index}: stderr is stored ({first}); fix the warning or filter it narrowly"
                )
            elif match := MACHINE_PATH.search(_text(output)):
                problems.append(f"code cell {index}: a path of this machine is stored ({match.group(0)!r})")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(REPO)) for p in NOTEBOOKS])
def test_stored_outputs_do_not_depend_on_the_machine(path: Path):
    problems = _problems(path)
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_check_finds_what_it_looks_for(tmp_path: Path):
    """The test above cannot pass vacuously: each kind of problem is reported, and ignored cells are not."""
    outputs = [
        {"output_type": "stream", "name": "stderr", "text": ["FutureWarning: old name\n"]},
        {"output_type": "stream", "name": "stdout", "text": [f"{REPO}/lessons\n"]},
        {"output_type": "error", "ename": "ValueError", "evalue": "", "traceback": []},
    ]
    cells = [
        {"cell_type": "code", "source": ["x = 1\n"], "metadata": {}, "outputs": outputs},
        {"cell_type": "code", "source": ["# NBVAL_IGNORE_OUTPUT\n"], "metadata": {}, "outputs": outputs},
    ]
    notebook = tmp_path / "bad.ipynb"
    notebook.write_text(json.dumps({"cells": cells}))
    problems = _problems(notebook)
    assert len(problems) == 3, problems
    assert all(p.startswith("code cell 0:") for p in problems), problems
    assert "stderr is stored" in problems[0]
    assert "a path of this machine" in problems[1]
    assert "a stored error (ValueError)" in problems[2]
