"""nbgrader's configuration for this course: per-cell timeout, output limits, a kernel death survived,
feedback without hidden tests. ``exercises/nbgrader_config.py`` and every grading path use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora101.grading.feedback import configure_feedback

CELL_TIMEOUT_S = 30
MAX_OUTPUT_LINES = 200
SUBMISSION_BUDGET_S = 600
COURSE_DIR = Path(__file__).resolve().parents[2] / "exercises"


@dataclass(frozen=True)
class Options:
    """How each submission is run: per-cell timeout, sandbox and its limits, the notebook's time budget."""

    cell_timeout: int = CELL_TIMEOUT_S
    sandbox: bool = True
    limits: dict | None = None
    budget: float = SUBMISSION_BUDGET_S

    def api_kwargs(self) -> dict:
        return dict(
            cell_timeout=self.cell_timeout, sandbox=self.sandbox, limits=self.limits, budget=self.budget
        )


DEFAULT_OPTIONS = Options()


def robust_execute():
    """The ``RobustExecute`` preprocessor class (``lora101.grading.execute``), imported on first use:
    importing nbgrader takes a second, and ``lora101 --help`` should not pay for it."""
    from lora101.grading.execute import RobustExecute  # imports nbgrader: see the docstring

    return RobustExecute


def grading_config(
    course_root: Path,
    cell_timeout: int = CELL_TIMEOUT_S,
    max_output_lines: int = MAX_OUTPUT_LINES,
    sandbox: bool = False,
    limits: dict | None = None,
    budget: float = SUBMISSION_BUDGET_S,
):
    """The nbgrader configuration for this course (what ``exercises/nbgrader_config.py`` uses too).

    ``course_root`` must be absolute; the exchange directory (unused here) goes inside it, so nothing is
    written outside the course folder. ``sandbox``: each kernel runs in ``lora101.grading.sandbox`` with
    ``limits`` (a ``SandboxLimits`` as a dict; ``None``: the defaults); ``budget``: wall-clock seconds for a
    whole notebook.
    """
    if cell_timeout <= 0:
        raise ValueError(f"--timeout {cell_timeout}: give a number of seconds above 0")
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (
        AssignLatePenalties,
        CheckCellMetadata,
        IgnorePattern,
        LimitOutput,
        SaveAutoGrades,
    )
    from traitlets.config import Config

    c = Config()
    c.CourseDirectory.root = str(Path(course_root).resolve())
    c.CourseDirectory.course_id = "lora101"
    c.Exchange.root = str(Path(course_root).resolve() / ".exchange")
    c.Execute.timeout = int(cell_timeout)
    c.Execute.interrupt_on_timeout = True
    # Output that arrives late (a busy machine, a flood of prints) must not fail the whole submission.
    c.Execute.iopub_timeout = 30
    c.Execute.raise_on_iopub_timeout = False
    c.RobustExecute.iopub_timeout = 30
    c.RobustExecute.raise_on_iopub_timeout = False
    c.RobustExecute.timeout = int(cell_timeout)
    c.RobustExecute.submission_budget = float(budget)
    if sandbox:
        _use_sandbox(c, limits)
    # The executor's findings (tampering, a kernel that died twice) travel in the notebook's metadata.
    c.ClearMetadataPreprocessor.preserve_nb_metadata_mask = {("language_info", "name"), ("lora101",)}
    c.OverwriteCells.add_missing_cells = True
    c.LimitOutput.max_lines = int(max_output_lines)
    c.LimitOutput.max_traceback = 60
    c.Autograde.autograde_preprocessors = [
        robust_execute(),
        IgnorePattern,
        ClearMetadataPreprocessor,
        LimitOutput,
        SaveAutoGrades,
        AssignLatePenalties,
        CheckCellMetadata,
    ]
    configure_feedback(c)  # feedback without the hidden tests' code; "awaiting grading" for hand grades
    return c


def _use_sandbox(c, limits: dict | None) -> None:
    from lora101.grading.sandbox import SandboxKernelManager  # imports jupyter_client, the instructor's extra

    c.RobustExecute.kernel_manager_class = SandboxKernelManager
    if limits:
        c.SandboxKernelManager.limits = dict(limits)


def api_for(course_root: Path, **kwargs):
    """An in-process ``nbgrader.apps.NbGraderAPI`` for ``course_root`` (no server, no exchange)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    config = grading_config(course_root, **kwargs)
    return NbGraderAPI(CourseDirectory(config=config), config=config)
