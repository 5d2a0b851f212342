"""Shared test set-up: offline, headless, and the venv's tools on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Nothing in the tests may reach a model hub; transformers and huggingface_hub honour these, and
# notebook kernels started by nbval inherit them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# nbgrader runs alembic (and nbval runs kernels) as subprocesses: the venv's bin/ must be on PATH.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The converted bundled model (converted once per machine, then only verified)."""
    from lora101 import models

    return models.prepare_model()
