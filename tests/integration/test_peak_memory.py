"""Peak memory is measured per process: a worker started by a large parent (a notebook kernel holding a
model, the test runner) must report its own peak, not its parent's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lora101.memory import peak_rss_bytes

MiB = 1024 * 1024
CHILD = """
import sys
from lora101.memory import peak_rss_bytes
before = peak_rss_bytes()
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
block[::4096] = b"\\1" * len(block[::4096])  # touch every page, so that it is resident
print(before, peak_rss_bytes())
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent's peak leaks into ru_maxrss on Linux"
)
def test_a_worker_reports_its_own_peak_not_its_parents():
    parent_block = bytearray(1500 * MiB)
    parent_block[::4096] = b"\1" * len(parent_block[::4096])
    assert peak_rss_bytes() > 1500 * MiB

    out = subprocess.run([sys.executable, "-c", CHILD, "400"], capture_output=True, text=True, check=True)
    before, after = (int(x) for x in out.stdout.split())
    del parent_block
    assert before < 1000 * MiB, f"the child's peak before allocating is {before / MiB:.0f} MiB: the parent's?"
    assert after - before > 350 * MiB, "the child's own 400 MiB did not show in its peak"
