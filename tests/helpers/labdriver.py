"""Drive JupyterLab in a real browser, the way a learner uses the course: open a notebook, Run All, look.

Used by tests/course/test_browser.py. Two pieces:

- `LabServer`: `jupyter lab` from this venv on 127.0.0.1 (a free port, a random token, throwaway config,
  data and runtime folders so that nothing of the user's Jupyter set-up leaks in, and the venv's own
  python3 kernel, checked), serving a folder of notebook copies (Lab autosaves: the originals are never
  touched).
- `run_notebook(page, ...)`: opens a notebook, clears it, runs all cells through JupyterLab's own
  `notebook:run-all-cells` command, waits for the kernel, and reports what a learner would see: error
  outputs, widget views and whether they rendered, images and whether they loaded, and the longest time
  the notebook showed nothing new while a cell was running.

The app object is reached through `window.jupyterapp`, which JupyterLab sets when it is started with
`--LabApp.expose_app_in_browser=True` (the same switch its own UI-test tool, Galata, uses).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Debian's chromium; a browser download (`playwright install`) is never used.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Without the background-networking switches Chromium tries to reach Google's services at start-up;
# on a closed network those connections hang or are refused and slow everything down.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def find_chromium() -> str | None:
    """The Chromium executable to drive: $LORA101_CHROMIUM, else Debian's, else None."""
    env = os.environ.get("LORA101_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the test process dies.

    A test run killed from outside (a CI time limit, `timeout`) cannot run its clean-up; without
    this the server and its kernels would live on, training models on nobody's behalf.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LabServer:
    """`jupyter lab` serving `root` on 127.0.0.1; a context manager that always stops it.

    `root` is the folder the notebooks (copies) live in; `workdir` holds throwaway Jupyter folders and
    the server log.
    """

    def __init__(self, root: Path, workdir: Path, start_timeout: float = 120.0) -> None:
        self.root = Path(root)
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.token = os.urandom(16).hex()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "jupyter-lab.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The address of `path` (a Lab path such as "lab/tree/x.ipynb"), with the token."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path}{sep}token={self.token}"

    def api(self, path: str) -> object:
        """GET /api/`path` and return the decoded JSON."""
        req = urllib.request.Request(
            f"{self.base_url}/api/{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            folder = self.workdir / name.lower()
            folder.mkdir(parents=True, exist_ok=True)
            env[name] = str(folder)
        # A learner's kernel uses the inline matplotlib backend; an MPLBACKEND=Agg from the environment
        # would stop plots from appearing in the page at all.
        env.pop("MPLBACKEND", None)
        # The browser test checks what a learner sees (cells run, no errors, widgets and plots render), not
        # the numbers, which nbval checks: lessons with long training runs honour LORA101_QUICK and cut them.
        env.setdefault("LORA101_QUICK", "1")
        env.pop("JUPYTERLAB_SETTINGS_DIR", None)
        env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def _write_settings(self, env: dict[str, str]) -> None:
        # Render every cell (JupyterLab 4 otherwise leaves cells far from the viewport out of the DOM,
        # which would hide their outputs from the checks and the screenshot); no update or news checks.
        settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings" / "@jupyterlab"
        (settings / "notebook-extension").mkdir(parents=True, exist_ok=True)
        (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
            json.dumps({"windowingMode": "none"})
        )
        (settings / "apputils-extension").mkdir(parents=True, exist_ok=True)
        (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )

    def __enter__(self) -> LabServer:
        env = self._env()
        self._write_settings(env)
        jupyter = Path(sys.executable).with_name("jupyter")
        cmd = [
            str(jupyter),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI runs as root; Jupyter refuses that unless told
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(
                        f"jupyter lab did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.5)
        return self

    def kernel_python(self) -> str:
        """The interpreter the server's default kernel (python3) runs: argv[0] of its kernelspec."""
        specs = self.api("kernelspecs")
        argv = specs["kernelspecs"]["python3"]["spec"]["argv"]
        return argv[0]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # The server and the kernels it started share its session: stop them all, politely first.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


def launch_browser(playwright, chromium: str, user_data_dir: Path):
    """A headless Chromium context with a fresh profile, 1400 px wide."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=chromium,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )


# --- what the page reports (JavaScript run in JupyterLab through window.jupyterapp) -------------------

_FIND_PANEL = """
(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
  }
  return null;
}
"""

JS_PANEL_READY = f"""
async (path) => {{
  const panel = ({_FIND_PANEL})(path);
  if (!panel) return 'no panel';
  await panel.context.ready;
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) return 'no kernel';
  return kernel.status;
}}
"""

JS_START_RUN = f"""
async (path) => {{
  const app = window.jupyterapp;
  const panel = ({_FIND_PANEL})(path);
  app.shell.activateById(panel.id);
  await app.commands.execute('notebook:clear-all-cell-outputs');
  // Not awaited: the command resolves only when the last cell finishes; the test polls instead.
  app.commands.execute('notebook:run-all-cells');
  return true;
}}
"""

JS_STATE = f"""
(path) => {{
  const panel = ({_FIND_PANEL})(path);
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const out = {{status: kernel ? kernel.status : 'none', code: 0, executed: 0, running: 0, runningCell: null, errors: [],
               png: 0, widgets: 0, text: 0}};
  panel.content.widgets.forEach((cell, index) => {{
    const m = cell.model;
    if (m.type !== 'code' || m.sharedModel.getSource().trim() === '') return;
    out.code += 1;
    if (m.executionCount !== null) out.executed += 1;
    // Queued cells show as running too: the one executing is the first.
    if (m.executionState === 'running') {{ out.running += 1; if (out.runningCell === null) out.runningCell = index; }}
    for (let i = 0; i < m.outputs.length; i++) {{
      const o = m.outputs.get(i).toJSON();
      if (o.output_type === 'error') out.errors.push({{cell: index, ename: o.ename, evalue: o.evalue,
                                                     traceback: (o.traceback || []).join('\\n')}});
      const data = o.data || {{}};
      if (data['image/png']) out.png += 1;
      if (data['{WIDGET_MIME}']) out.widgets += 1;
    }}
  }});
  // Everything the learner can read in the notebook (text and images): when it stops changing while
  // a cell runs, the learner is looking at a silent notebook.
  const nb = panel.content.node;
  const text = nb.innerText;
  let hash = 0;
  for (let i = 0; i < text.length; i++) hash = (hash * 31 + text.charCodeAt(i)) | 0;
  out.text = text.length + 7 * nb.querySelectorAll('img').length;
  out.sig = hash;
  return out;
}}
"""

JS_DOM_CHECKS = """
() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  // Top-level outputs of cells (a widget's own output areas nest inside these).
  const outputs = Array.from(nb.querySelectorAll(
      '.jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output'));
  const broken = [];
  let rendered = 0;
  for (const v of outputs) {
    const text = v.innerText || '';
    if (/Error displaying widget|Loading widget|model not found/i.test(text)) broken.push(text.slice(0, 200));
    else if (v.firstElementChild && v.firstElementChild.classList.contains('jupyter-widgets')) rendered += 1;
  }
  const imgs = Array.from(nb.querySelectorAll('.jp-OutputArea-output[data-mime-type="image/png"] img'));
  const loaded = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  return {rendered, broken, imgs: imgs.length, loaded};
}
"""

# The controls of widget cells: each entry is the cell index and the kind of its first control.
JS_WIDGET_CELLS = """
() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  const cells = Array.from(nb.querySelectorAll('.jp-Cell'));
  const found = [];
  cells.forEach((cell, index) => {
    const area = cell.querySelector('.jp-OutputArea');
    if (!area) return;
    let kind = null;
    if (area.querySelector('.widget-slider .noUi-handle, .widget-hslider .noUi-handle')) kind = 'slider';
    else if (area.querySelector('.widget-dropdown select')) kind = 'dropdown';
    else if (area.querySelector('.widget-toggle-buttons button')) kind = 'toggle';
    else if (area.querySelector('.widget-radio-box input')) kind = 'radio';
    else if (area.querySelector('.widget-checkbox input')) kind = 'checkbox';
    if (kind) found.push({index, kind});
  });
  return found;
}
"""

# What a widget cell shows as its result: its output area without the controls themselves.
JS_RESULT_SIGNATURE = """
(index) => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  const cell = nb.querySelectorAll('.jp-Cell')[index];
  const clone = cell.querySelector('.jp-OutputArea').cloneNode(true);
  clone.querySelectorAll('.widget-readout, .widget-slider, .widget-hslider, .widget-dropdown, '
      + '.widget-toggle-buttons, .widget-radio, .widget-checkbox, input, select, button')
      .forEach((e) => e.remove());
  const imgs = Array.from(clone.querySelectorAll('img')).map((i) => i.getAttribute('src') || '');
  return clone.textContent + '|' + imgs.join('|');
}
"""

JS_SHUTDOWN = f"""
async (path) => {{
  const panel = ({_FIND_PANEL})(path);
  if (!panel) return false;
  await panel.context.save();
  await panel.sessionContext.shutdown();
  panel.dispose();
  return true;
}}
"""

JS_SCROLLER = """
(toTop) => {
  // The notebook scrolls inside its panel: its content height is the bottom of the last cell
  // (JupyterLab adds empty room below it so the last cell can scroll up).
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const outer = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
  if (toTop) outer.scrollTop = 0;
  const cells = panel.querySelectorAll('.jp-Cell');
  const last = cells[cells.length - 1];
  const bottom = last ? last.getBoundingClientRect().bottom - outer.getBoundingClientRect().top + outer.scrollTop : 0;
  return {scroll: Math.ceil(bottom) + 40, client: outer.clientHeight};
}
"""


@dataclass
class RunReport:
    """What a learner saw after Run All on one notebook."""

    path: str
    seconds: float = 0.0
    code_cells: int = 0
    executed: int = 0
    errors: list[dict] = field(default_factory=list)
    png_outputs: int = 0
    widget_outputs: int = 0
    dom: dict = field(default_factory=dict)
    longest_silence: float = 0.0
    silent_cell: int | None = None  # the cell that was running then (index among all cells)
    timed_out: bool = False


def open_notebook(page, server: LabServer, path: str, timeout: float = 120.0) -> None:
    """Open `path` (relative to the server root) in Lab and wait for its kernel to be idle."""
    from playwright.sync_api import Error as PlaywrightError

    page.goto(server.url(f"lab/tree/{path}?reset"), wait_until="domcontentloaded", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            dialog = page.query_selector(".jp-Dialog")
            status = None if dialog is not None else page.evaluate(JS_PANEL_READY, path)
        except PlaywrightError as exc:
            # `?reset` makes JupyterLab reload once it has cleared the workspace: wait for the new page.
            if "context was destroyed" not in str(exc) and "navigation" not in str(exc):
                raise
            time.sleep(0.5)
            continue
        if dialog is not None:
            raise AssertionError(
                f"{path}: JupyterLab opened a dialog instead of the notebook: {dialog.inner_text()!r}"
            )
        if status == "idle":
            return
        time.sleep(0.5)
    raise AssertionError(f"{path}: notebook or kernel not ready after {timeout:.0f} s (last state: {status})")


def run_all(page, path: str, timeout: float, poll: float = 1.0) -> RunReport:
    """Clear outputs, Run All, and wait until every code cell ran (or one failed) and the kernel is idle."""
    report = RunReport(path=path)
    page.evaluate(JS_START_RUN, path)
    start = last_change = time.monotonic()
    last_text = None
    settled = 0
    while True:
        time.sleep(poll)
        now = time.monotonic()
        state = page.evaluate(JS_STATE, path)
        key = (state["text"], state["sig"], state["executed"])
        if key != last_text:
            last_text, last_change = key, now
        elif state["running"] and now - last_change > report.longest_silence:
            report.longest_silence = now - last_change
            report.silent_cell = state["runningCell"]
        done = (
            state["status"] == "idle"
            and not state["running"]
            and (state["executed"] == state["code"] or state["errors"])
        )
        settled = settled + 1 if done else 0
        if settled >= 2:
            break
        if now - start > timeout:
            report.timed_out = True
            break
    report.seconds = time.monotonic() - start
    report.code_cells, report.executed = state["code"], state["executed"]
    report.errors = state["errors"]
    report.png_outputs, report.widget_outputs = state["png"], state["widgets"]
    # Widget views and images render asynchronously after the kernel went idle: give them a moment.
    deadline = time.monotonic() + 20
    while True:
        dom = page.evaluate(JS_DOM_CHECKS)
        if (
            dom["rendered"] >= report.widget_outputs and dom["loaded"] >= dom["imgs"] >= report.png_outputs
        ) or (time.monotonic() > deadline):
            break
        time.sleep(0.5)
    report.dom = dom
    return report


def widget_cells(page) -> list[dict]:
    """The cells whose output holds an input control: [{"index": cell index, "kind": "slider"|...}]."""
    return page.evaluate(JS_WIDGET_CELLS)


def poke_widget(page, index: int, kind: str, timeout: float = 60.0) -> tuple[str, str]:
    """Change the first control of cell `index` as a learner would; return the result before and after.

    The result is the cell's output without the controls (text and image sources); it is read until
    it changes or `timeout` passes.
    """
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)
    area = cell.locator(".jp-OutputArea")
    before = page.evaluate(JS_RESULT_SIGNATURE, index)
    if kind == "slider":
        handle = area.locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.click()
        # noUiSlider's keyboard support: End jumps to the maximum; Home back if already there.
        handle.press("End")
        page.wait_for_timeout(300)
        if page.evaluate(JS_RESULT_SIGNATURE, index) == before:
            handle.press("Home")
    elif kind == "dropdown":
        select = area.locator(".widget-dropdown select").first
        select.scroll_into_view_if_needed()
        options = select.locator("option").all()
        current = select.evaluate("(s) => s.selectedIndex")
        choice = options[(current + 1) % len(options)].get_attribute("value")
        select.select_option(value=choice)
    elif kind == "toggle":
        buttons = area.locator(".widget-toggle-buttons button")
        for i in range(buttons.count()):
            b = buttons.nth(i)
            if "mod-active" not in (b.get_attribute("class") or ""):
                b.click()
                break
    elif kind == "radio":
        radios = area.locator(".widget-radio-box input")
        for i in range(radios.count()):
            if not radios.nth(i).is_checked():
                radios.nth(i).check()
                break
    elif kind == "checkbox":
        area.locator(".widget-checkbox input").first.click()
    else:
        raise ValueError(f"kind must be slider, dropdown, toggle, radio or checkbox, got {kind!r}")
    deadline = time.monotonic() + timeout
    after = before
    while time.monotonic() < deadline:
        after = page.evaluate(JS_RESULT_SIGNATURE, index)
        if after != before:
            # Let a plot that is being redrawn finish before anyone looks at it.
            page.wait_for_timeout(500)
            break
        page.wait_for_timeout(250)
    return before, after


def screenshot(page, path: Path, max_height: int = 12000) -> list[Path]:
    """Save the whole notebook: the viewport grows to the notebook's height (in parts beyond max_height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.evaluate(JS_SCROLLER, True)
    width = page.viewport_size["width"]
    chrome = 1000 - size["client"] if size["client"] else 150  # toolbar, tabs, status bar
    total = size["scroll"]
    saved = []
    if total + chrome <= max_height:
        page.set_viewport_size({"width": width, "height": max(1000, total + chrome)})
        page.wait_for_timeout(500)
        page.evaluate(JS_SCROLLER, True)
        page.screenshot(path=str(path))
        saved.append(path)
    else:
        page.set_viewport_size({"width": width, "height": max_height})
        page.wait_for_timeout(500)
        step = page.evaluate(JS_SCROLLER, True)["client"]
        part, top = 1, 0
        while top < total:
            page.evaluate(
                """(top) => {
                  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
                  if (nb) nb.scrollTop = top;
                }""",
                top,
            )
            page.wait_for_timeout(300)
            p = path.with_name(f"{path.stem}_part{part}{path.suffix}")
            page.screenshot(path=str(p))
            saved.append(p)
            part, top = part + 1, top + step
    page.set_viewport_size({"width": width, "height": 1000})
    return saved


def shutdown_notebook(page, path: str) -> None:
    """Save the (copied) notebook, stop its kernel and close it, so the next lesson starts with free memory."""
    page.evaluate(JS_SHUTDOWN, path)


# --- nbgrader's Validate button ----------------------------------------------------------------------

JS_SET_SOURCES = f"""
async ([path, sources]) => {{
  // sources: {{grade_id: new cell source}}; the learner's typing, done through the cell models.
  const panel = ({_FIND_PANEL})(path);
  const done = [];
  for (const cell of panel.content.widgets) {{
    const meta = cell.model.getMetadata('nbgrader');
    if (meta && meta.grade_id in sources) {{
      cell.model.sharedModel.setSource(sources[meta.grade_id]);
      done.push(meta.grade_id);
    }}
  }}
  await panel.context.save();
  return done;
}}
"""


def set_answers(page, path: str, sources: dict[str, str]) -> list[str]:
    """Replace the source of the cells whose nbgrader grade_id is a key of `sources`, then save.

    Returns the grade ids it changed (in notebook order).
    """
    return page.evaluate(JS_SET_SOURCES, [path, sources])


def validate(page, path: str, timeout: float = 300.0) -> tuple[str, str]:
    """Save, press the notebook toolbar's Validate button (nbgrader's extension), read the result dialog.

    Returns (outcome, text): outcome is the dialog body's validation-* class ("success", "failed",
    "changed" or "passed"; "error" when the validate command itself failed) and text what it says.
    """
    page.evaluate(f"async (path) => {{ await ({_FIND_PANEL})(path).context.save(); }}", path)
    button = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar").get_by_text(
        "Validate", exact=True
    )
    button.click()
    dialog = page.locator(".jp-Dialog").filter(has_text="Validation Results")
    dialog.wait_for(state="visible", timeout=timeout * 1000)
    body = dialog.locator(".jp-Dialog-body")
    outcome = body.evaluate(
        """(b) => {
          const el = b.querySelector('[class*="validation-"]') || b;
          const cls = Array.from(el.classList).find((c) => c.startsWith('validation-'));
          return cls ? cls.slice('validation-'.length) : 'error';
        }"""
    )
    text = body.inner_text()
    return outcome, text


def close_dialog(page) -> None:
    """Press the OK button of the open dialog."""
    page.locator(".jp-Dialog .jp-Dialog-footer button").last.click()
    page.locator(".jp-Dialog").wait_for(state="detached", timeout=10_000)
