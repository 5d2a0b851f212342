"""Running one benchmark measurement in a fresh process, so that its peak memory is its own."""

from __future__ import annotations

import json
import subprocess
import sys


def run_worker(benchmark: str, spec: dict, label: str) -> dict:
    """Run ``lora101 bench BENCHMARK --worker SPEC`` in a new process; return the dict it printed as ``RESULT``.

    The worker's stderr is shown when it fails, and the error names ``label``.
    """
    cmd = [sys.executable, "-m", "lora101.cli", "bench", benchmark, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"the {label} worker failed (exit {proc.returncode}); its stderr is above")
    return json.loads(found[-1][len("RESULT ") :])
