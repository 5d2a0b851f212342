"""nbgrader's configuration for this course: per-cell timeout, output limits, a kernel death survived,
feedback without hidden tests. ``exercises/nbgrader_config.py`` and every grading path use it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lora101.grading.feedback import configure_feedback

CELL_TIMEOUT_S = 30
MAX_OUTPUT_LINES = 200
COURSE_DIR = Path(__file__).resolve().parents[2] / "exercises"


@cache
def robust_execute():
    """The ``RobustExecute`` preprocessor class (built on first use: importing nbgrader takes a second, and
    ``lora101 --help`` should not pay for it)."""
    from nbclient.exceptions import DeadKernelError
    from nbformat import NotebookNode
    from nbgrader.preprocessors import Execute

    class RobustExecute(Execute):
        """nbgrader's ``Execute``, surviving a kernel that dies in a cell.

        nbgrader gives up on the whole submission when the kernel dies (``DeadKernelError``: no grades at all).
        Here the cell that killed it gets an error output (so its tests fail for want of its definitions), a
        fresh kernel is started, the code cells above it are re-run silently (skipping any that killed the
        kernel too), and execution goes on.
        """

        def preprocess(self, nb, resources=None, km=None):
            self._killers: set[int] = set()
            return super().preprocess(nb, resources, km)

        def preprocess_cell(self, cell, resources, index):
            try:
                return super().preprocess_cell(cell, resources, index)
            except DeadKernelError:
                self.log.warning(
                    "cell %d killed the kernel; restarting it and re-running the cells above", index
                )
                self._killers.add(index)
                cell.outputs = [
                    NotebookNode(
                        output_type="error",
                        ename="DeadKernelError",
                        evalue="the kernel died while running this cell",
                        traceback=[
                            "DeadKernelError: the kernel died while running this cell (os._exit, a crash, "
                            "running out of memory...); grading restarted it and went on."
                        ],
                    )
                ]
                self._restart()
                for i, earlier in enumerate(self.nb.cells[:index]):
                    if earlier.cell_type == "code" and i not in self._killers:
                        self.execute_cell(earlier.copy(), i, store_history=False)
                return cell, self.resources

        def _restart(self) -> None:
            from nbclient.util import run_sync

            run_sync(self.km.restart_kernel)(now=True)
            if self.kc is not None:
                self.kc.stop_channels()
            self.kc = self.km.client()
            self.kc.start_channels()
            run_sync(self.kc.wait_for_ready)(timeout=self.startup_timeout)
            self.kc.allow_stdin = False

    return RobustExecute


def grading_config(
    course_root: Path, cell_timeout: int = CELL_TIMEOUT_S, max_output_lines: int = MAX_OUTPUT_LINES
):
    """The nbgrader configuration for this course (what ``exercises/nbgrader_config.py`` uses too).

    ``course_root`` must be absolute; the exchange directory (unused here) goes inside it, so nothing is
    written outside the course folder.
    """
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


def api_for(course_root: Path, **kwargs):
    """An in-process ``nbgrader.apps.NbGraderAPI`` for ``course_root`` (no server, no exchange)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    config = grading_config(course_root, **kwargs)
    return NbGraderAPI(CourseDirectory(config=config), config=config)
