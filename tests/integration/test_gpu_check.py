"""tests/gpu_check.sh rehearsed on the CPU: every step runs and is recorded whatever fails, with its own timeout.

The rehearsal (GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZES=tiny) runs the same script end to end on a two-layer
model, with one step broken on purpose; the step runner, the run order and the records are tested alone too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_driver():
    """tests/gpu/run.py, under a name of its own (a bare ``import run`` could find another module)."""
    spec = importlib.util.spec_from_file_location("lora101_gpu_check_run", REPO / "tests" / "gpu" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_run = _load_driver()


def test_a_step_is_ok_failed_out_of_memory_or_timed_out_and_its_log_says_so(tmp_path):
    py = sys.executable
    ok = gpu_run.run_step([py, "-c", "print('hello')"], 60, tmp_path / "ok.txt")
    assert ok["status"] == "ok" and ok["rc"] == 0
    assert "hello" in (tmp_path / "ok.txt").read_text()
    failed = gpu_run.run_step([py, "-c", "raise SystemExit(3)"], 60, tmp_path / "failed.txt")
    assert failed["status"] == "failed" and failed["rc"] == 3
    oom = "import sys; print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'); sys.exit(1)"
    assert gpu_run.run_step([py, "-c", oom], 60, tmp_path / "oom.txt")["status"] == "out of memory"
    # a step that started a worker of its own: the timeout ends both
    pid_file = tmp_path / "worker.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    slow = gpu_run.run_step(["sh", "-c", script], 2, tmp_path / "slow.txt")
    assert slow["status"] == "timed out"
    assert "[timed out" in (tmp_path / "slow.txt").read_text()
    worker = int(pid_file.read_text())
    # SIGKILL is delivered at once but acted on when the worker is next scheduled: on a busy machine it can
    # still be running for a moment after the step's shell has been reaped.
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker), "the step's own worker outlived the timeout's kill by 10 s"


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a killed process its parent has not reaped yet is a zombie: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_the_largest_full_fine_tuning_runs_last():
    order = gpu_run.scale_order(["1b", "8b"], {"1b": 2})
    assert order[-1] == ("8b", "full", 0)
    assert order[:6] == [(s, m, r) for m in ("full", "lora", "qlora") for s, r in (("1b", 0), ("1b", 1))]
    assert [o for o in order if o[0] == "8b"] == [("8b", "lora", 0), ("8b", "qlora", 0), ("8b", "full", 0)]


def test_each_row_is_written_as_it_is_measured_and_an_out_of_memory_is_a_row(tmp_path):
    check = gpu_run.Check(tmp_path / "out", tmp_path / "bundle")
    settings = {"steps": 4, "batch_size": 2, "seq_len": 2048, "checkpointing": True}
    measured = tmp_path / "scale.json"
    run = {
        "size": "8b",
        "method": "lora",
        "peak_bytes": 2**34,
        "predicted_bytes": 2**34,
        "tokens_per_s": 5000.0,
    }
    measured.write_text(json.dumps({"settings": settings, "runs": [run]}))
    log = tmp_path / "out" / "steps" / "01.txt"
    log.write_text("...")
    for method, status, output in (
        ("lora", "ok", measured),
        ("full", "out of memory", tmp_path / "none.json"),
    ):
        meta = dict(size="8b", method=method, repeat=0, output=str(output), settings=settings)
        step = gpu_run.Step(f"scale_8b_{method}_0", ["lora101"], 60, "scale", meta)
        check.record(step, {"status": status, "rc": 1 if status != "ok" else 0, "seconds": 1.0}, log)
        rows = (tmp_path / "bundle" / "scale.jsonl").read_text().splitlines()
        assert json.loads(rows[-1])["status"] == status and json.loads(rows[-1])["method"] == method
    doc = json.loads((tmp_path / "bundle" / "results.json").read_text())
    assert [s["status"] for s in doc["steps"]] == ["ok", "out of memory"]
    table = (tmp_path / "bundle" / "table.md").read_text()
    assert (
        "| 8b | full | 0 | out of memory |" in table
        and "| 8b | lora | 0 | ok | 16.00 | 16.00 | 5000.0 |" in table
    )
    assert {p.name for p in (tmp_path / "bundle").iterdir()} == {
        "results.json",
        "scale.jsonl",
        "table.md",
        "steps.tar.gz",
    }


def test_the_spread_of_repeated_runs():
    rows = [{"size": "1b", "method": "lora", "status": "ok", "tokens_per_s": t} for t in (95.0, 100.0, 105.0)]
    rows.append({"size": "1b", "method": "full", "status": "out of memory"})
    assert gpu_run.spread(rows) == {"1b/lora": {"runs": 3, "median_tokens_per_s": 100.0, "spread": 0.1}}


def test_the_carried_bitsandbytes_wheel_keeps_only_the_cpu_and_cuda_13_libraries(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda118.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_rocm64.so",
    ]
    with zipfile.ZipFile(wheel, "w") as z:
        for name in names:
            z.writestr(name, b"x")
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "".join(f"{n},sha256=x,1\n" for n in names))
    gpu_run.slim_wheel(wheel, keep=("libbitsandbytes_cpu.so", "libbitsandbytes_cuda13"))
    with zipfile.ZipFile(wheel) as z:
        kept = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    want = {names[0], names[1], names[3]}
    assert kept == want | {"bitsandbytes-0.50.2.dist-info/RECORD"}
    assert {line.split(",")[0] for line in record.splitlines()} == want


@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_step_and_a_broken_one_stops_nothing(tmp_path, base_model_dir):
    out, bundle = tmp_path / "out", tmp_path / "bundle"
    # GPU_CHECK_BUDGET_S: the 9-minute budget is the GPU call's; a busy CPU may need longer
    env = {
        **os.environ,
        "PY": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_SIZES": "tiny",
        "GPU_CHECK_OUT": str(out),
        "GPU_CHECK_BUNDLE": str(bundle),
        "GPU_CHECK_BREAK": "doctor",
        "GPU_CHECK_CARRY": str(tmp_path / "no-carry"),
        "GPU_CHECK_BUDGET_S": "3000",
    }
    proc = subprocess.run(
        ["bash", "tests/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # one step failed: the broken one
    for folder in (out, bundle):
        for name in gpu_run.BUNDLED:
            assert (folder / name).is_file(), folder / name
    doc = json.loads((bundle / "results.json").read_text())
    status = {s["step"]: s["status"] for s in doc["steps"]}
    want = [
        "machine",
        "doctor",
        "model",
        "lesson5",
        "finetune",
        "scale_tiny_lora_0",
        "scale_tiny_qlora_0",
        "scale_tiny_full_0",
    ]
    assert list(status) == want
    assert status.pop("doctor") == "failed" and set(status.values()) == {"ok"}, status
    for step in doc["steps"]:
        assert (out / step["log"]).is_file()
    assert "broken on purpose" in (out / doc["steps"][1]["log"]).read_text()
    assert doc["machine"]["versions"]["torch"]
    assert all(c["passed"] for c in doc["lesson5"]["checks"]) and len(doc["lesson5"]["checks"]) == 6
    assert {r["variant"] for r in doc["finetune"]} == {"qlora", "lora", "baseline"}
    rows = [json.loads(line) for line in (bundle / "scale.jsonl").read_text().splitlines()]
    assert [(r["size"], r["method"], r["status"]) for r in rows] == [
        ("tiny", m, "ok") for m in ("lora", "qlora", "full")
    ]
    assert all(r["peak_bytes"] > 0 and r["tokens_per_s"] > 0 and r["settings"]["seq_len"] == 64 for r in rows)
