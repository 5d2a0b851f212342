"""Shared test set-up: offline, headless, and the venv's tools on PATH."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

import matplotlib
import pytest

REPO = Path(__file__).resolve().parent.parent

# The tests are by kind (unit/, integration/, course/, conformance/); what several of them share (tiny models,
# a tiny nbgrader course, the exercises' wrong answers, the browser driver) is in helpers/, imported by name.
sys.path.insert(0, str(REPO / "tests" / "helpers"))

# Nothing in the tests may reach a model hub; transformers and huggingface_hub honour these, and
# notebook kernels started by nbval inherit them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Figures drawn by the tests themselves never open a window. Only this process: notebook kernels
# (nbval, the browser test) keep the inline backend a learner's kernel has, so stored plots are compared
# the way a learner sees them whether a notebook is run alone or with the whole suite.
matplotlib.use("Agg")
# nbgrader runs alembic (and nbval runs kernels) as subprocesses: the venv's bin/ must be on PATH.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def _refuse_the_network() -> None:
    """Make any connection from the test process to a non-loopback address fail loudly.

    The tests are offline by design; this turns an accidental download (a hub look-up, a dataset
    fetch) into an error that names the address instead of a slow, flaky pass. Servers the tests
    start themselves (JupyterLab, kernels) are on loopback and unaffected.
    """
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address) -> bool:
        if not isinstance(address, tuple):  # AF_UNIX paths
            return True
        host = address[0]
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:  # a host name: resolving it already needed the network
            return False

    def connect(self, address):
        if not allowed(address):
            raise OSError(f"tests are offline: refused a connection to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not allowed(address):
            raise OSError(f"tests are offline: refused a connection to {address!r}")
        return real_connect_ex(self, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex


_refuse_the_network()


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    """The converted bundled model (converted once per machine, then only verified)."""
    from lora101 import models

    return models.prepare_model()
