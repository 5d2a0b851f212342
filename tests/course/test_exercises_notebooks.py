"""The exercises without nbgrader's machinery: every plausible wrong answer fails its test cell, every
alternative correct answer passes it (visible and hidden tests together, run in this process), and the
notebooks are well formed: release/ has no solution and no hidden test, each exercise has the Colab set-up
cell and badge, and lora101.checks resists a learner's monkeypatching."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import nbformat
import pytest
import torch
from exercise_variants import SPARED, VARIANTS  # tests/helpers is on sys.path (tests/conftest.py)

from lora101.colab import SETUP_CELL, colab_badge

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "exercises" / "source"
RELEASE = REPO / "exercises" / "release"
ASSIGNMENTS = sorted(p.name for p in SOURCE.iterdir() if p.is_dir())


def _nb(folder: Path, name: str):
    return nbformat.read(folder / name / f"{name}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def answer_source(cell_source: str, variant: str) -> str:
    """A learner's answer cell: ``+code`` appended to the reference solution, otherwise ``code`` alone."""
    return cell_source + "\n" + variant[1:] if variant.startswith("+") else variant


def run_test_cell(assignment: str, answer_id: str, variant: str, test_id: str) -> None:
    """Execute the source notebook up to ``test_id`` with ``variant`` as the answer in ``answer_id``."""
    ns: dict = {}
    for cell in _nb(SOURCE, assignment).cells:
        meta = _meta(cell)
        gid = meta.get("grade_id")
        if cell.cell_type != "code" or gid == "setup":
            continue
        if meta.get("grade") and gid != test_id:
            continue  # other test cells
        src = answer_source(cell.source, variant) if gid == answer_id else cell.source
        exec(compile(src, f"<{assignment}:{gid}>", "exec"), ns)
        if gid == test_id:
            return
    raise AssertionError(f"{test_id} not found in {assignment}")


CASES = [
    pytest.param(a, t, spec["answer"], kind, name, code, id=f"{a}-{t}-{kind}-{name}")
    for a, tests in VARIANTS.items()
    for t, spec in tests.items()
    for kind in ("wrong", "right")
    for name, code in spec[kind].items()
]


@pytest.mark.parametrize("assignment,test_id,answer_id,kind,name,code", CASES)
def test_variant(assignment, test_id, answer_id, kind, name, code):
    """A wrong answer fails its test cell (any exception means zero points); a right one passes."""
    torch.manual_seed(1234)
    if kind == "right":
        run_test_cell(assignment, answer_id, code, test_id)
    else:
        with pytest.raises(Exception):  # noqa: B017 (nbgrader gives zero for any error in a test cell)
            run_test_cell(assignment, answer_id, code, test_id)


SPARED_CASES = [
    pytest.param(a, t, named, id=f"{a}-{t}-spares-{named.replace('/', '-')}")
    for a, tests in SPARED.items()
    for t, names in tests.items()
    for named in names
]


@pytest.mark.parametrize("assignment,test_id,named", SPARED_CASES)
def test_a_mistake_costs_only_its_own_test_cell(assignment, test_id, named):
    """A wrong answer that another test cell catches earns this cell's full points: one idea, one cell's points."""
    source_test, name = named.split("/")
    spec = VARIANTS[assignment][source_test]
    torch.manual_seed(1234)
    run_test_cell(assignment, spec["answer"], spec["wrong"][name], test_id)


def test_every_autograded_cell_has_three_wrong_and_two_right_answers():
    for a in ASSIGNMENTS:
        graded = [
            _meta(c)["grade_id"]
            for c in _nb(SOURCE, a).cells
            if c.cell_type == "code" and _meta(c).get("grade")
        ]
        assert graded, f"{a} has no autograded cell"
        assert set(graded) == set(VARIANTS[a]), (
            f"{a}: variants for {sorted(VARIANTS[a])}, cells {sorted(graded)}"
        )
        for t in graded:
            assert len(VARIANTS[a][t]["wrong"]) >= 3 and len(VARIANTS[a][t]["right"]) >= 2, f"{a}/{t}"


def test_reference_solutions_pass_every_test_cell():
    for a, tests in VARIANTS.items():
        for t, spec in tests.items():
            run_test_cell(a, spec["answer"], "+", t)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_structure(assignment):
    """Points on every test cell, a docstring opening it, the set-up cell first, the Colab badge in the title."""
    for folder in (SOURCE, RELEASE):
        nb = _nb(folder, assignment)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == SETUP_CELL, (
            f"{folder.name}/{assignment}: first code cell must be the Colab set-up"
        )
        assert colab_badge(f"exercises/release/{assignment}/{assignment}.ipynb") in nb.cells[0].source
        ids = [_meta(c).get("grade_id") for c in nb.cells if _meta(c)]
        assert len(ids) == len(set(ids)), "grade ids must be unique"
        for c in nb.cells:
            m = _meta(c)
            if m.get("grade"):
                assert m.get("points", 0) > 0, f"{m['grade_id']} has no points"
            if m.get("grade") and c.cell_type == "code":
                assert c.source.startswith('"""'), f"{m['grade_id']}: open with a one-line docstring"
                assert m.get("locked"), f"{m['grade_id']} must be read-only"


SOLUTION_LINE = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_leaks_no_solution_and_no_hidden_test(assignment):
    text = (RELEASE / assignment / f"{assignment}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"release {assignment} contains {marker!r}"
    release = _nb(RELEASE, assignment)
    release_src = "\n".join(c.source for c in release.cells if c.cell_type == "code")
    for cell in _nb(SOURCE, assignment).cells:
        for block in SOLUTION_LINE.findall(cell.source):
            for line in block.splitlines():
                line = line.strip()
                if len(line) > 12 and line not in ("return y", "self.merged = False"):
                    assert line not in release_src, f"release {assignment} leaks solution line {line!r}"
        hidden = re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", cell.source, re.S)
        for block in hidden:
            for line in block.splitlines():
                if len(line.strip()) > 12:
                    assert line.strip() not in release_src, f"release {assignment} leaks hidden test {line!r}"
    for c in release.cells:
        assert not c.get("outputs"), "release notebooks carry no outputs"


def test_checks_resist_monkeypatching():
    """Patching the checks module or torch.allclose is undone by the reload every test cell starts with."""
    import lora101.checks

    real_allclose = torch.allclose
    try:
        lora101.checks.lora_params = lambda fn: None
        torch.allclose = lambda *a, **k: True
        checks = importlib.reload(lora101.checks)
        with pytest.raises(AssertionError, match="adapter"):
            checks.lora_params(lambda d_in, d_out, r: d_in * d_out)
        assert torch.allclose is not real_allclose or torch.allclose(torch.zeros(1), torch.zeros(1))
        assert not torch.allclose(torch.zeros(1), torch.ones(1)), "reload must restore torch.allclose"
    finally:
        torch.allclose = real_allclose
        importlib.reload(lora101.checks)


# Learners never get the course's source material: exercise text names public sources or states the claim.
SEED_CITATION = re.compile(r"\bseeds?\s+0\d\d\b|\bthe seeds\b|\bseeds'|\bseed's\b|shared/seeds", re.I)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_exercise_text_cites_the_course_seeds(assignment):
    for folder in (SOURCE, RELEASE):
        for i, cell in enumerate(_nb(folder, assignment).cells):
            hit = SEED_CITATION.search(cell.source)
            assert not hit, (
                f"{folder.name}/{assignment} cell {i} cites {hit.group(0)!r}: name a public source instead"
            )
    hit = SEED_CITATION.search((REPO / "lora101" / "checks.py").read_text())
    assert not hit, f"lora101/checks.py cites {hit.group(0)!r}: its messages reach learners"
