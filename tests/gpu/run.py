"""The GPU check's driver: every step in its own process, with its own timeout and output file, whatever fails.

tests/gpu_check.sh calls it (README, "The GPU check", says how to run it and what it writes):

    python tests/gpu/run.py [--out DIR] [--bundle DIR] [--device cuda] [--sizes 1b,8b] [--budget-s 500]
    python tests/gpu/run.py carry [DEST]   # what a machine with no network needs, into DEST (at most 64 MiB)

Steps, in order: the machine (GPU, driver, versions, TF32 settings); ``lora101 doctor``; a random-weight
SmolLM2 of the real shape built from a carried tokenizer and config (``tiny``: two layers of width 64); lesson
5's code path on the device (tests/gpu/lesson5_path.py); ``lora101 bench finetune`` (lora101's loop against
the plain transformers + PEFT script); ``lora101 bench scale`` one (size, method) at a time, the largest full
fine-tuning last. A failing or timed-out step is recorded and the next one runs; an out-of-memory is a row
that says so. After every step ``results.json`` (machine, steps, rows), ``scale.jsonl`` (one measured row a
line), ``table.md`` and ``steps.tar.gz`` (every step's log) are rewritten in --out and copied to --bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LESSON5 = Path(__file__).resolve().with_name("lesson5_path.py")
CARRY = REPO / "test-artifacts" / "gpu-carry"
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)
OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED")
BUNDLED = ("results.json", "scale.jsonl", "table.md", "lesson5.json", "steps.tar.gz")


@dataclass
class Step:
    """One command of the check: ``kind`` says how its output becomes rows ("scale", "finetune" or "")."""

    name: str
    argv: list[str]
    timeout_s: float
    kind: str = ""
    meta: dict = field(default_factory=dict)


def run_step(argv: list[str], timeout_s: float, log: Path, env: dict | None = None) -> dict:
    """Run ``argv`` with stdout and stderr into ``log``; kill its whole process group at ``timeout_s``.

    Returns {"status": "ok" | "failed" | "timed out" | "out of memory", "rc", "seconds"}.
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout_s)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and the workers it started
            rc, status = proc.wait(), "timed out"
    seconds = time.perf_counter() - start
    if status == "failed" and any(m in log.read_text(errors="replace") for m in OOM_MARKERS):
        status = "out of memory"
    with open(log, "a") as out:
        out.write(f"\n[{status}: exit {rc} after {seconds:.1f} s, limit {timeout_s:.0f} s]\n")
    return {"status": status, "rc": rc, "seconds": round(seconds, 1)}


def scale_order(sizes: list[str], repeats: dict[str, int]) -> list[tuple[str, str, int]]:
    """(size, method, repeat) in run order: size by size, and the last size's full fine-tuning last of all
    (the run most likely to exhaust the GPU's memory must not keep the others from running)."""
    order = []
    for i, size in enumerate(sizes):
        methods = ("lora", "qlora", "full") if i == len(sizes) - 1 else ("full", "lora", "qlora")
        order += [(size, m, r) for m in methods for r in range(repeats.get(size, 1))]
    return order


def plan(opts: argparse.Namespace, model_dir: Path, source: Path) -> list[Step]:
    py, tiny = sys.executable, "tiny" in opts.sizes
    steps = [
        Step("machine", [py, __file__, "machine"], 60),
        Step("doctor", [py, "-m", "lora101.cli", "doctor"], 120),
        Step(
            "model",
            [py, str(LESSON5), "build-model", str(source), str(model_dir), *(["--tiny"] if tiny else [])],
            180,
        ),
        Step(
            "lesson5",
            [
                py,
                str(LESSON5),
                "run",
                str(model_dir),
                "--device",
                opts.device,
                "--steps",
                str(opts.lesson5_steps),
                "--batch-size",
                str(opts.batch),
                "--json",
                str(opts.out / "lesson5.json"),
            ],
            300,
        ),
        Step(
            "finetune",
            [
                py,
                "-m",
                "lora101.cli",
                "bench",
                "finetune",
                "--model",
                str(model_dir),
                "--steps",
                str(opts.finetune_steps),
                "--batch-size",
                str(opts.batch),
                "--json",
            ],
            300,
            "finetune",
        ),
    ]
    for size, method, repeat in scale_order(opts.sizes, opts.repeats):
        steps_n = opts.scale_steps.get(size, opts.scale_steps["default"])
        output = opts.out / "work" / f"scale_{size}_{method}_{repeat}.json"
        argv = [
            py,
            "-m",
            "lora101.cli",
            "bench",
            "scale",
            "--sizes",
            size,
            "--methods",
            method,
            "--steps",
            str(steps_n),
            "--batch-size",
            str(opts.scale_batch),
            "--seq-len",
            str(opts.seq_len),
            "--device",
            opts.device,
            "--output",
            str(output),
            "--force",
        ]
        meta = dict(
            size=size,
            method=method,
            repeat=repeat,
            output=str(output),
            settings=dict(
                steps=steps_n, batch_size=opts.scale_batch, seq_len=opts.seq_len, checkpointing=True
            ),
        )
        steps.append(
            Step(f"scale_{size}_{method}_{repeat}", argv, 240 if size == "8b" else 150, "scale", meta)
        )
    return steps


class Check:
    """The results of one run of the check, rewritten to disk after every step."""

    def __init__(self, out: Path, bundle: Path | None) -> None:
        self.out, self.bundle = out, bundle
        (out / "steps").mkdir(parents=True, exist_ok=True)
        for old in (out / "steps").glob("*.txt"):  # an earlier run's logs, except this run's install log
            if old.name != "00_install.txt":
                old.unlink()
        (out / "work").mkdir(exist_ok=True)
        for name in BUNDLED:
            (out / name).unlink(missing_ok=True)
        self.doc: dict = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": None,
            "steps": [],
            "scale": [],
            "finetune": None,
            "lesson5": None,
        }

    def record(self, step: Step, result: dict, log: Path) -> None:
        entry = {"step": step.name, **result, "log": f"steps/{log.name}", "command": shlex.join(step.argv)}
        self.doc["steps"].append(entry)
        text = log.read_text(errors="replace")
        if step.name == "machine" and "MACHINE " in text:
            self.doc["machine"] = json.loads(text.split("MACHINE ", 1)[1].splitlines()[0])
        if step.name == "lesson5" and (self.out / "lesson5.json").is_file():
            self.doc["lesson5"] = json.loads((self.out / "lesson5.json").read_text())
        if step.kind == "finetune" and result["status"] == "ok":
            self.doc["finetune"] = _json_after(text, "\n[\n")
        if step.kind == "scale":
            self._scale_rows(step, result)
        self.write()

    def _scale_rows(self, step: Step, result: dict) -> None:
        meta = step.meta
        base = {
            "size": meta["size"],
            "method": meta["method"],
            "repeat": meta["repeat"],
            "settings": meta["settings"],
        }
        rows = []
        if result["status"] == "ok" and Path(meta["output"]).is_file():
            doc = json.loads(Path(meta["output"]).read_text())
            rows = [{**base, **run, "status": "ok"} for run in doc["runs"]]
        rows = rows or [
            {**base, "status": result["status"] if result["status"] != "ok" else "no row written"}
        ]
        with open(self.out / "scale.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        self.doc["scale"] += rows

    def write(self) -> None:
        self.doc["spread"] = spread(self.doc["scale"])
        (self.out / "results.json").write_text(json.dumps(self.doc, indent=2) + "\n")
        (self.out / "table.md").write_text(table(self.doc))
        with tarfile.open(self.out / "steps.tar.gz", "w:gz") as tar:
            tar.add(self.out / "steps", arcname="steps")
        if self.bundle is not None:
            self.bundle.mkdir(parents=True, exist_ok=True)
            for name in BUNDLED:
                if (self.out / name).is_file() and self.bundle.resolve() != self.out.resolve():
                    shutil.copyfile(self.out / name, self.bundle / name)


def _json_after(text: str, marker: str):
    at = text.rfind(marker)
    if at < 0:
        return None
    try:
        return json.JSONDecoder().raw_decode(text, at + 1)[0]
    except ValueError:
        return None


def spread(rows: list[dict]) -> dict[str, dict]:
    """Tokens/s of the repeated scale runs: median, and (max - min) / median, per size/method."""
    found: dict[str, list[float]] = {}
    for r in rows:
        if r.get("status") == "ok":
            found.setdefault(f"{r['size']}/{r['method']}", []).append(r["tokens_per_s"])
    return {
        key: {
            "runs": len(v),
            "median_tokens_per_s": statistics.median(v),
            "spread": (max(v) - min(v)) / statistics.median(v),
        }
        for key, v in found.items()
        if len(v) > 1
    }


def table(doc: dict) -> str:
    """The check's results as Markdown: steps, scale rows (as measured, or why not), bench finetune."""
    lines = [
        "# GPU check",
        "",
        f"started {doc['started']}; machine: {json.dumps(doc['machine'])}",
        "",
        "| step | status | seconds | log |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['log']} |" for s in doc["steps"]]
    lines += [
        "",
        "| size | method | repeat | status | peak GiB | predicted GiB | tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in doc["scale"]:
        if r["status"] == "ok":
            lines.append(
                f"| {r['size']} | {r['method']} | {r['repeat']} | ok | {r['peak_bytes'] / 2**30:.2f} "
                f"| {r['predicted_bytes'] / 2**30:.2f} | {r['tokens_per_s']:.1f} |"
            )
        else:
            lines.append(f"| {r['size']} | {r['method']} | {r['repeat']} | {r['status']} | | | |")
    for key, s in doc.get("spread", {}).items():
        lines.append(
            f"\n{key}: {s['runs']} runs, median {s['median_tokens_per_s']:.1f} tokens/s, spread {s['spread']:.1%}"
        )
    by = {r["variant"]: r for r in doc.get("finetune") or []}
    if "qlora" in by and "baseline" in by:
        ratio = by["qlora"]["tokens_per_s"] / by["baseline"]["tokens_per_s"]
        lines.append(f"\nlora101's loop / the plain transformers + PEFT script: {ratio:.2f}x tokens/s")
    for r in doc.get("finetune") or []:
        lines.append(
            f"\nbench finetune {r['variant']}: {r['tokens_per_s']:.1f} tokens/s, peak {r['peak_memory_bytes'] / 2**20:.0f} MiB"
        )
    return "\n".join(lines) + "\n"


def machine() -> int:
    """Print the machine and its settings, then one line ``MACHINE {json}`` for results.json."""
    import importlib.metadata as md
    import platform

    import torch

    from lora101.doctor import installed_versions

    versions = installed_versions()
    for name in ("pyarrow", "huggingface_hub"):  # what datasets needs from the machine itself
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    info = {
        "platform": platform.platform(),
        "torch_cuda": torch.version.cuda,
        "versions": versions,
        "tf32": {
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=list(torch.cuda.get_device_capability(0)),
            gpu_memory_bytes=props.total_memory,
        )
        if shutil.which("nvidia-smi"):
            subprocess.run(["nvidia-smi"], timeout=30)
    print("MACHINE " + json.dumps(info), flush=True)
    return 0


def model_source(carry: Path) -> Path:
    """The tokenizer and config to build the random-weight model from: carried, else the bundled model's."""
    if (carry / "smollm2-135m-instruct" / "config.json").is_file():
        return carry / "smollm2-135m-instruct"
    from lora101 import models

    return models.cache_dir() if models.verify_cache(models.cache_dir()) is None else models.prepare_model()


def check(opts: argparse.Namespace) -> int:
    results = Check(opts.out, opts.bundle)
    try:
        source = model_source(opts.carry)
    except Exception as err:  # noqa: BLE001  (recorded: the model steps then fail on their own)
        source = opts.carry / "smollm2-135m-instruct"
        print(f"no tokenizer and config to build the model from: {err}", file=sys.stderr)
    steps = plan(opts, opts.out / "work" / "model", source)
    env = {**os.environ, "LORA101_DEVICE": opts.device, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    install = opts.out / "steps" / "00_install.txt"
    if env.get("GPU_CHECK_INSTALL_RC") and install.is_file():  # tests/gpu_check.sh installed carried wheels
        rc = int(env["GPU_CHECK_INSTALL_RC"])
        result = {"status": "ok" if rc == 0 else "failed", "rc": rc, "seconds": None}
        results.record(
            Step("install", ["pip", "install", "--target", "(carried wheels)"], 0), result, install
        )
    start = time.perf_counter()
    for i, step in enumerate(steps, 1):
        if step.name in opts.broken:  # deliberately failing: the rehearsal checks that the rest still run
            step.argv = [
                sys.executable,
                "-c",
                f"raise SystemExit('{step.name}: broken on purpose (--break)')",
            ]
        log = opts.out / "steps" / f"{i:02d}_{step.name}.txt"
        left = opts.budget_s - (time.perf_counter() - start)
        if left < 15:
            log.write_text(f"skipped: {left:.0f} s of the {opts.budget_s:.0f} s budget left\n")
            result = {"status": "skipped", "rc": None, "seconds": 0.0}
        else:
            print(f"[{i}/{len(steps)}] {step.name} (limit {min(step.timeout_s, left):.0f} s)", flush=True)
            result = run_step(step.argv, min(step.timeout_s, left), log, env)
        print(f"[{i}/{len(steps)}] {step.name}: {result['status']} ({result['seconds']} s)", flush=True)
        results.record(step, result, log)
    bad = [s["step"] for s in results.doc["steps"] if s["status"] != "ok"]
    print(f"wrote {opts.out}/results.json, table.md, scale.jsonl, steps.tar.gz; not ok: {bad or 'none'}")
    return 1 if bad else 0


def carry(dest: Path, python_version: str) -> int:
    """Download what the GPU machine lacks (bitsandbytes, and datasets with dill and multiprocess, as wheels for
    its Python) and copy the bundled model's tokenizer and config: at most 64 MiB together. Not pyarrow (55 MB):
    datasets needs the machine's own to be 24 or newer (the machine step records its version)."""
    import importlib.metadata as md

    from lora101 import models

    wheels = dest / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pins = [f"{name}=={md.version(name)}" for name in ("bitsandbytes", "datasets", "dill", "multiprocess")]
    platforms = [a for n in (28, 27, 24, 17) for a in ("--platform", f"manylinux_2_{n}_x86_64")]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *platforms,
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            str(wheels),
            *pins,
        ],
        check=True,
    )
    for wheel in wheels.glob("bitsandbytes-*.whl"):
        slim_wheel(wheel, keep=("libbitsandbytes_cpu.so", "libbitsandbytes_cuda13"))
    folder = dest / "smollm2-135m-instruct"
    folder.mkdir(parents=True, exist_ok=True)
    source = models.prepare_model()
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{dest}: {total / 2**20:.1f} MiB ({', '.join(sorted(p.name for p in wheels.iterdir()))})")
    if total > 60 * 2**20:
        print("over 60 MiB: with the repository it would not fit one 64 MiB transfer", file=sys.stderr)
        return 1
    return 0


def slim_wheel(wheel: Path, keep: tuple[str, ...]) -> None:
    """Rewrite ``wheel`` without the compiled libraries whose names start with none of ``keep`` (bitsandbytes
    ships one per CUDA and ROCm version; the GPU machine needs one), RECORD updated to match."""
    import zipfile

    def dropped(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return base.endswith(".so") and base.startswith("libbitsandbytes") and not base.startswith(keep)

    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if dropped(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = (
                    "\n".join(line for line in lines if not dropped(line.split(",", 1)[0])) + "\n"
                ).encode()
            dst.writestr(item, data)
    slim.replace(wheel)


def _options(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(env("GPU_CHECK_OUT") or REPO / "test-artifacts" / "gpu")
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=env("GPU_CHECK_BUNDLE") or None,
        help="a folder to copy results.json, scale.jsonl, table.md, lesson5.json, steps.tar.gz to",
    )
    parser.add_argument("--device", default=env("GPU_CHECK_DEVICE") or "cuda")
    parser.add_argument("--sizes", default=env("GPU_CHECK_SIZES") or "1b,8b")
    parser.add_argument("--budget-s", type=float, default=float(env("GPU_CHECK_BUDGET_S") or 500))
    parser.add_argument(
        "--break",
        dest="broken",
        default=env("GPU_CHECK_BREAK") or "",
        help="comma-separated steps to replace by a failing command (tests the rest still run)",
    )
    parser.add_argument("--carry", type=Path, default=Path(env("GPU_CHECK_CARRY") or CARRY))
    opts = parser.parse_args(argv)
    opts.sizes = [s.strip() for s in opts.sizes.split(",") if s.strip()]
    opts.broken = {s.strip() for s in opts.broken.split(",") if s.strip()}
    tiny = "tiny" in opts.sizes
    # tiny: the CPU rehearsal, minutes on two cores; else sized for one GPU call of at most 9 minutes
    opts.lesson5_steps, opts.batch, opts.finetune_steps = (4, 4, 2) if tiny else (60, 16, 20)
    opts.seq_len, opts.scale_batch = (64, 1) if tiny else (int(env("GPU_CHECK_SEQ_LEN") or 2048), 2)
    opts.scale_steps = {"default": 2} if tiny else {"1b": 10, "8b": 4, "default": 4}
    opts.repeats = {} if tiny else {"1b": 2}
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["machine"]:
        return machine()
    if argv[:1] == ["carry"]:
        parser = argparse.ArgumentParser(prog="run.py carry")
        parser.add_argument("dest", type=Path, nargs="?", default=CARRY)
        parser.add_argument(
            "--python-version", default="3.12", help="the GPU machine's Python (default %(default)s)"
        )
        args = parser.parse_args(argv[1:])
        return carry(args.dest, args.python_version)
    return check(_options(argv))


if __name__ == "__main__":
    sys.exit(main())
