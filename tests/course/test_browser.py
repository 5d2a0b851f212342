"""The course as a learner sees it: lessons run in JupyterLab, in a real (headless) Chromium.

For each selected notebook in lessons/ the test opens it in `jupyter lab` (this venv, its own python3 kernel),
clears it, runs all cells with JupyterLab's Run All, and checks what is on the page: no cell shows an
error, every widget renders and answers when its first control is changed, every plot appears as a
loaded image (at least as many as the stored notebook has), and it saves a screenshot of the whole
notebook under test-artifacts/screenshots/ (the test prints the paths).

Browser: Debian's `chromium`, driven by Playwright's Python package through `executable_path`; never a
browser download. Without Chromium or Playwright the tests skip with the reason, except under CI
(CI=true), where a missing browser is a failure. `tests/browser/ensure_chromium.sh` installs it.

Which lessons: LORA101_BROWSER_LESSONS, `all` or numbers such as `01,05` (default `01`: the widget explorers
and plots of lesson 1; every lesson's outputs are checked by nbval, and `all` runs each in the browser too,
with training cut short by LORA101_QUICK=1, which takes a CI machine's time several times over).

Knobs: LORA101_BROWSER_TIMEOUT (seconds a notebook may take to run, default 900), LORA101_MAX_SILENCE
(seconds a running lesson may show nothing new; unset: reported, not enforced),
LORA101_CHROMIUM (another Chromium executable), LORA101_SCREENSHOTS (another screenshot folder).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from lesson_selection import selected_lessons  # tests/helpers is on sys.path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("LORA101_SCREENSHOTS", REPO / "test-artifacts" / "screenshots"))
TIMEOUT = float(os.environ.get("LORA101_BROWSER_TIMEOUT", "900"))
# "Nothing a learner runs sits silent for more than a few seconds": the longest a lesson may show
# nothing new (no output, no progress-bar tick) while a cell runs, measured on the page.
# Measured on the page, so it scales with the machine's load: reported always, enforced only when set.
MAX_SILENCE = float(os.environ.get("LORA101_MAX_SILENCE", "inf"))
LESSONS = selected_lessons(
    sorted((REPO / "lessons").glob("[0-9][0-9]_*.ipynb")), "LORA101_BROWSER_LESSONS", "01"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    """Skip on a laptop; fail in CI, where the browser test is part of the bar."""
    hint = "install it with tests/browser/ensure_chromium.sh (root, apt) or set LORA101_CHROMIUM"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the browser test must run; {hint})", pytrace=False)
    pytest.skip(f"{reason}; {hint}")


def _stored_counts(nb_path: Path) -> tuple[int, int]:
    """(image/png outputs, widget-view outputs) stored in a notebook file."""
    nb = nbformat.read(nb_path, as_version=4)
    png = widgets = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            png += "image/png" in data
            widgets += "application/vnd.jupyter.widget-view+json" in data
    return png, widgets


def _harness_notebooks(folder: Path) -> None:
    """Two small notebooks that exercise every check: one healthy, one with an error in its middle."""
    ks = {"name": "python3", "display_name": "Python 3", "language": "python"}
    good = nbformat.v4.new_notebook(metadata={"kernelspec": ks})
    good.cells = [
        nbformat.v4.new_markdown_cell("# Harness self-check"),
        nbformat.v4.new_code_cell("import sys\nprint('kernel python:', sys.executable)"),
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(3, 2), dpi=60)\nax.plot([1, 3, 2]);"
        ),
        nbformat.v4.new_code_cell(
            "import ipywidgets as w\nimport matplotlib.pyplot as plt\n\n"
            "def show(n=3):\n"
            "    print('n squared is', n * n)\n"
            "    fig, ax = plt.subplots(figsize=(3, 2), dpi=60)\n"
            "    ax.bar(range(n), range(n))\n"
            "    plt.show()\n\n"
            "w.interact(show, n=w.IntSlider(value=3, min=1, max=9));"
        ),
        nbformat.v4.new_code_cell(
            "def pick(colour='red'):\n    print('colour is', colour)\n\n"
            "w.interact(pick, colour=w.Dropdown(options=['red', 'green', 'blue']));"
        ),
        nbformat.v4.new_code_cell(
            "import time\n\ntime.sleep(8)  # silent: the harness must notice\nprint('done')"
        ),
    ]
    bad = nbformat.v4.new_notebook(metadata={"kernelspec": ks})
    bad.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('the harness must see this')"),
        nbformat.v4.new_code_cell("print('never runs')"),
    ]
    # An nbgrader student notebook as `nbgrader generate_assignment` writes one: an answer cell with the
    # solution replaced by a stub, and a locked test cell.
    exercise = nbformat.v4.new_notebook(metadata={"kernelspec": ks})
    meta = {"schema_version": 3, "locked": False, "solution": True, "grade": False, "grade_id": "square"}
    test_meta = {"schema_version": 3, "locked": True, "solution": False, "grade": True, "points": 1}
    exercise.cells = [
        nbformat.v4.new_markdown_cell("# Square it"),
        nbformat.v4.new_code_cell(
            "def square(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()",
            metadata={"nbgrader": meta},
        ),
        nbformat.v4.new_code_cell(
            '"""square(3) is 9."""\nassert square(3) == 9',
            metadata={"nbgrader": {**test_meta, "grade_id": "test_square"}},
        ),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(good, folder / "good.ipynb")
    nbformat.write(bad, folder / "bad.ipynb")
    nbformat.write(exercise, folder / "exercise.ipynb")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(server, browser context): `jupyter lab` on copies of the course, and a headless Chromium."""
    from labdriver import LabServer, find_chromium, launch_browser  # imports no playwright

    chromium = find_chromium()
    if chromium is None:
        _unavailable(
            f"Chromium not found (looked at {os.environ.get('LORA101_CHROMIUM') or '/usr/bin/chromium'})"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -c constraints.txt -e '.[dev]')")

    work = tmp_path_factory.mktemp("lab")
    root = work / "root"
    # Copies: Lab autosaves the notebooks it runs, and the learner's (and git's) files stay untouched.
    shutil.copytree(REPO / "lessons", root / "lessons", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    if (REPO / "exercises" / "release").is_dir():
        shutil.copytree(REPO / "exercises" / "release", root / "exercises" / "release")
    _harness_notebooks(root / "harness")

    with LabServer(root, work) as server, sync_playwright() as pw:
        context = launch_browser(pw, chromium, work / "chromium-profile")
        context.set_default_timeout(60_000)
        try:
            yield server, context
        finally:
            context.close()


def _run(lab, rel_path: str, timeout: float = TIMEOUT):
    """Open `rel_path` in a fresh page, Run All, and return (page, report); the caller closes the page."""
    from labdriver import open_notebook, run_all

    server, context = lab
    page = context.new_page()
    open_notebook(page, server, rel_path)
    report = run_all(page, rel_path, timeout=timeout)
    return page, report


def _assert_clean_run(report, rel_path: str) -> None:
    assert not report.timed_out, (
        f"{rel_path}: Run All did not finish in {TIMEOUT:.0f} s "
        f"({report.executed}/{report.code_cells} code cells ran; raise LORA101_BROWSER_TIMEOUT?)"
    )
    assert not report.errors, f"{rel_path}: cells show errors in JupyterLab:\n" + "\n\n".join(
        f"cell {e['cell']}: {e['ename']}: {e['evalue']}" for e in report.errors
    )
    assert report.executed == report.code_cells, (
        f"{rel_path}: {report.executed}/{report.code_cells} code cells ran"
    )
    dom = report.dom
    assert not dom["broken"], f"{rel_path}: widgets failed to display: {dom['broken']}"
    assert dom["rendered"] >= report.widget_outputs, (
        f"{rel_path}: {report.widget_outputs} widget outputs but only {dom['rendered']} rendered widgets on the page"
    )
    assert dom["loaded"] >= report.png_outputs and dom["loaded"] == dom["imgs"], (
        f"{rel_path}: {report.png_outputs} image/png outputs, {dom['imgs']} <img> on the page, {dom['loaded']} loaded"
    )


def _check_widgets_respond(page, rel_path: str) -> list[str]:
    """Change the first control of every widget cell; each cell's shown result must change."""
    from labdriver import poke_widget, widget_cells

    done = []
    for cell in widget_cells(page):
        before, after = poke_widget(page, cell["index"], cell["kind"])
        assert after != before, (
            f"{rel_path}: cell {cell['index']}: changing its {cell['kind']} did not change what the cell shows"
        )
        done.append(f"cell {cell['index']} ({cell['kind']})")
    return done


def _finish(page, rel_path: str, name: str, report, extra: str = "") -> None:
    from labdriver import screenshot, shutdown_notebook

    shots = screenshot(page, SCREENSHOTS / f"{name}.png")
    shutdown_notebook(page, rel_path)
    page.close()
    print(
        f"\n{rel_path}: ran {report.executed} code cells in {report.seconds:.0f} s; "
        f"{report.png_outputs} plots, {report.dom.get('rendered', 0)} widgets shown{extra}; "
        f"longest silence while running {report.longest_silence:.0f} s (cell {report.silent_cell})\n"
        + "\n".join(f"  screenshot: {p}" for p in shots)
    )


def test_harness_sees_what_a_learner_sees(lab):
    """The checks can fail: on a small notebook of known content they find the plots, the widgets,
    the widgets' answers, the kernel's interpreter, and an error in a cell."""
    server, _ = lab
    page, report = _run(lab, "harness/good.ipynb", timeout=120)
    _assert_clean_run(report, "harness/good.ipynb")
    # One plot output of its own, and one more image inside the interact widget.
    assert report.png_outputs >= 1 and report.dom["loaded"] >= 2, report
    assert report.widget_outputs == 2 and report.dom["rendered"] == 2, report
    text = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(1).inner_text()
    assert (
        f"kernel python: {sys.executable}" in text
        or f"kernel python: {Path(sys.executable).resolve()}" in text
    ), f"the kernel is not this venv's python ({sys.executable}): {text!r}"
    assert 4 <= report.longest_silence <= 20, report  # the 8 s sleep, polled once a second
    assert _check_widgets_respond(page, "harness/good.ipynb") == ["cell 3 (slider)", "cell 4 (dropdown)"]
    _finish(page, "harness/good.ipynb", "harness_good", report)

    page, report = _run(lab, "harness/bad.ipynb", timeout=120)
    assert [(e["cell"], e["ename"], e["evalue"]) for e in report.errors] == [
        (1, "ValueError", "the harness must see this")
    ], report
    assert report.executed == 2 and report.code_cells == 3, report  # Run All stops at the error
    _finish(page, "harness/bad.ipynb", "harness_bad", report)


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_in_jupyterlab(lab, lesson: Path):
    """Run All in JupyterLab: no errors, widgets render and respond, plots appear; a screenshot is saved."""
    rel = f"lessons/{lesson.name}"
    page, report = _run(lab, rel)
    _assert_clean_run(report, rel)
    stored_png, stored_widgets = _stored_counts(lesson)
    assert report.png_outputs >= stored_png, (
        f"{rel}: the stored notebook has {stored_png} plots, JupyterLab showed {report.png_outputs}"
    )
    assert report.widget_outputs >= stored_widgets, (
        f"{rel}: the stored notebook has {stored_widgets} widgets, JupyterLab showed {report.widget_outputs}"
    )
    assert report.longest_silence <= MAX_SILENCE, (
        f"{rel}: the notebook showed nothing new for {report.longest_silence:.0f} s while cell "
        f"{report.silent_cell} ran "
        f"(limit {MAX_SILENCE:.0f} s, LORA101_MAX_SILENCE): a long step needs a progress bar"
    )
    poked = _check_widgets_respond(page, rel)
    _finish(page, rel, lesson.stem, report, extra=f"; widgets answered: {', '.join(poked) or 'none to poke'}")


def _solutions(source_nb: Path) -> dict[str, str]:
    """{grade_id: solved source} for the code answer cells of an nbgrader source notebook (markers dropped)."""
    nb = nbformat.read(source_nb, as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            markers = ("### BEGIN SOLUTION", "### END SOLUTION")
            out[meta["grade_id"]] = "\n".join(
                ln for ln in cell.source.splitlines() if ln.strip() not in markers
            )
    return out


def _validate_unsolved_then_solved(lab, rel: str, solutions: dict[str, str], name: str) -> None:
    """Validate as handed out (the tests must fail), then with the solutions typed in (they must pass)."""
    from labdriver import close_dialog, screenshot, set_answers, shutdown_notebook, validate

    page, report = _run(lab, rel)
    assert not report.timed_out, f"{rel}: Run All did not finish"
    outcome, text = validate(page, rel)
    assert outcome == "failed", f"{rel}: Validate on the unsolved notebook said {outcome!r}:\n{text}"
    assert "The following cell failed" in text, text
    shots = screenshot(page, SCREENSHOTS / f"{name}_validate_unsolved.png")
    close_dialog(page)
    changed = set_answers(page, rel, solutions)
    assert sorted(changed) == sorted(solutions), (
        f"{rel}: answer cells {changed}, solutions for {sorted(solutions)}"
    )
    outcome, text = validate(page, rel)
    shots += screenshot(page, SCREENSHOTS / f"{name}_validate_solved.png")
    assert outcome == "success", f"{rel}: Validate with the solutions filled in said {outcome!r}:\n{text}"
    close_dialog(page)
    shutdown_notebook(page, rel)
    page.close()
    print(
        f"\n{rel}: Validate failed as handed out, passed once solved\n"
        + "\n".join(f"  screenshot: {p}" for p in shots)
    )


def test_harness_validate_button(lab):
    """nbgrader's Validate button on a small student notebook: failing tests as handed out, success when solved."""
    solved = {"square": "def square(x):\n    return x * x"}
    _validate_unsolved_then_solved(lab, "harness/exercise.ipynb", solved, "harness_exercise")


RELEASE = sorted((REPO / "exercises" / "release").glob("*/*.ipynb"))[:1]


@pytest.mark.parametrize("exercise", RELEASE, ids=[f"{p.parent.name}/{p.stem}" for p in RELEASE])
def test_release_exercise_validate(lab, exercise: Path):
    """One release exercise in JupyterLab: Validate shows the failing tests, then success once solved."""
    source = REPO / "exercises" / "source" / exercise.parent.name / exercise.name
    assert source.exists(), f"{exercise} has no source notebook at {source}"
    rel = f"exercises/release/{exercise.parent.name}/{exercise.name}"
    _validate_unsolved_then_solved(
        lab, rel, _solutions(source), f"exercise_{exercise.parent.name}_{exercise.stem}"
    )
