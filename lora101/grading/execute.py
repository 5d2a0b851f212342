"""``RobustExecute``: nbgrader's ``Execute``, made to finish whatever a submission does.

- A cell that kills its kernel gets an error output; a fresh kernel re-runs the cells above it (not those
  that killed it) and grading goes on. A second death ends the notebook's run: the remaining cells get an
  error output, and the submission is flagged for review with the reason.
- A cell past its timeout is interrupted; one that ignores the interrupt for ``interrupt_grace`` seconds
  has its kernel (its whole sandbox) killed, and counts as a death.
- ``submission_budget`` seconds of wall-clock time for the whole notebook: past it, the remaining cells
  are not run.
- Before each test cell, ``lora101.grading.probe`` compares the kernel's state with the state before the
  first cell; answer cells' sources are read for the same tricks. Either flags the submission for review.

Findings go into the executed notebook's metadata (``metadata.lora101``): written by the grader, not the
kernel, and read by ``lora101.grading.one`` into the submission's status.
"""

from __future__ import annotations

import ast
import json
from queue import Empty
from time import monotonic

from nbclient.exceptions import DeadKernelError
from nbclient.util import run_sync
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute
from nbgrader.utils import is_grade, is_solution
from traitlets import Float, Int

from lora101.grading import probe


class KernelKilled(DeadKernelError):
    """The grader killed the kernel (a cell that ignored its interrupt)."""


def _error_output(ename: str, why: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=why, traceback=[f"{ename}: {why}"])


class RobustExecute(Execute):
    interrupt_grace = Float(5.0, help="seconds a timed-out cell has to obey its interrupt").tag(config=True)
    submission_budget = Float(600.0, help="seconds of wall-clock time for a whole notebook").tag(config=True)
    deaths_allowed = Int(1, help="kernel deaths survived (re-running the cells above)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._killers: set[int] = set()
        self._deaths, self._gave_up, self._baseline = 0, "", None
        self._review: list[str] = []
        self._started = monotonic()
        self._scan_answers(nb)
        nb, resources = super().preprocess(nb, resources, km)
        nb.metadata["lora101"] = {"review": sorted(set(self._review)), "stopped": self._gave_up}
        return nb, resources

    def _scan_answers(self, nb) -> None:
        for cell in nb.cells:
            if cell.cell_type == "code" and is_solution(cell) and not is_grade(cell):
                for why in probe.suspicious_source(cell.source):
                    self._review.append(f"an answer cell reaches for {why}")

    def preprocess_cell(self, cell, resources, index):
        if not self._gave_up and monotonic() - self._started > self.submission_budget:
            self._give_up(f"the notebook used its {self.submission_budget:.0f} s time budget")
        if self._gave_up:
            if cell.cell_type == "code":
                cell.outputs = [_error_output("NotRun", f"not run: {self._gave_up}")]
            return cell, self.resources
        if cell.cell_type == "code" and is_grade(cell) and not is_solution(cell):
            self._check_tampering()
        try:
            return super().preprocess_cell(cell, resources, index)
        except DeadKernelError as err:
            return self._after_death(cell, index, err)

    def _get_timeout(self, cell):
        timeout = super()._get_timeout(cell)
        left = self.submission_budget - (monotonic() - self._started)
        return max(1, int(min(timeout, left))) if timeout else timeout

    def _give_up(self, why: str) -> None:
        self._gave_up = why
        self._review.append(why)

    def _after_death(self, cell, index, err):
        killed = isinstance(err, KernelKilled)
        why = str(err) if killed else "the kernel died while running this cell (os._exit, a crash, memory)"
        self.log.warning("cell %d: %s", index, why)
        cell.outputs = [_error_output("DeadKernelError", why)]
        self._killers.add(index)
        self._deaths += 1
        if self._deaths > self.deaths_allowed:
            self._give_up(f"the kernel died {self._deaths} times")
            return cell, self.resources
        self._restart()
        self._baseline = None
        for i, earlier in enumerate(self.nb.cells[:index]):
            if earlier.cell_type == "code" and i not in self._killers:
                self.execute_cell(earlier.copy(), i, store_history=False)
        return cell, self.resources

    # -- timeouts: interrupt, then kill ------------------------------------------------------------
    async def _async_handle_timeout(self, timeout, cell=None):
        reply = await super()._async_handle_timeout(timeout, cell)
        if not await self._async_responds(self.interrupt_grace):
            raise KernelKilled(
                f"the cell ran past its {timeout} s timeout and ignored the interrupt for "
                f"{self.interrupt_grace:.0f} s: its kernel was killed"
            )
        return reply

    async def _async_responds(self, grace: float) -> bool:
        """Whether the kernel answers a ``kernel_info`` request within ``grace`` seconds."""
        msg_id = self.kc.kernel_info()
        deadline = monotonic() + grace
        while (left := deadline - monotonic()) > 0:
            try:
                msg = await self.kc.shell_channel.get_msg(timeout=left)
            except Empty:
                return False
            if msg["parent_header"].get("msg_id") == msg_id:
                return True
        return False

    # -- tampering ---------------------------------------------------------------------------------
    def _fingerprint(self) -> dict | None:
        expressions = {"fp": probe.EXPRESSION}
        msg_id = self.kc.execute("", silent=True, store_history=False, user_expressions=expressions)
        get = run_sync(self.kc.shell_channel.get_msg)
        try:
            reply = get(timeout=self.timeout or 30)
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = get(timeout=self.timeout or 30)
            found = reply["content"]["user_expressions"]["fp"]
            return json.loads(ast.literal_eval(found["data"]["text/plain"]))
        except Exception as err:  # a kernel that cannot answer the probe is itself a finding
            self._review.append(f"the tampering probe failed ({type(err).__name__})")
            return None

    def _check_tampering(self) -> None:
        if self._baseline is None:
            return
        now = self._fingerprint()
        if now is not None:
            self._review.extend(probe.differences(self._baseline, now))

    def execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if self._baseline is None and self.kc is not None:
            self._baseline = self._fingerprint() or {}
        return super().execute_cell(cell, cell_index, execution_count, store_history)

    def _restart(self) -> None:
        run_sync(self.km.restart_kernel)(now=True)
        if self.kc is not None:
            self.kc.stop_channels()
        self.kc = self.km.client()
        self.kc.start_channels()
        run_sync(self.kc.wait_for_ready)(timeout=self.startup_timeout)
        self.kc.allow_stdin = False
