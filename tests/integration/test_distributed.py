"""`lora101 finetune` under torchrun: 2 CPU processes (gloo) train what 1 process trains, write once, resume.

A tiny random Llama (two layers, width 64, SmolLM2's tokenizer) keeps the three runs (one process, two
processes, two processes resumed) to seconds of training; start-up and model loading dominate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from code_words import write_jsonl
from tiny_llama import tiny_llama  # tests/helpers is on sys.path (tests/conftest.py)

from lora101.cli import main
from lora101.distributed import BatchSplitError, per_process_batch
from lora101.finetune import ADAPTER_FILES, last_checkpoint

STEPS = 4
# The first logged loss is computed before any update (warm-up makes step 1's learning rate 0): the two
# runs must agree there up to float rounding. After updates, sums taken in another order (two halves
# all-reduced instead of one batch) differ in the last bits, and Adam, which divides each gradient by its
# own size, turns those into visible differences: measured here 0.2-0.4% of the loss at a learning rate
# of 1e-4, the same size as between one process taking the batch whole and in two accumulated halves.
BEFORE_UPDATE_RTOL = 1e-5
AFTER_UPDATE_RTOL = 0.02


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, base_model_dir):
    """A two-layer Llama with SmolLM2's tokenizer, saved as a local folder `--model` accepts."""
    model, tokenizer = tiny_llama()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "pairs.jsonl")


def _args(model, data, out, *extra):
    settings = (
        "--batch-size 2 --save-steps 2 --rank 4 --alpha 16 --lr 1e-4 --eval-fraction 0.25 --max-new-tokens 4"
    )
    paths = ["--model", str(model), "--data", str(data), "--output", str(out)]
    return ["finetune", *paths, "--steps", str(STEPS), *settings.split(), "--device", "cpu", *extra]


def _torchrun(args, processes=2):
    """Run `lora101 finetune` as torchrun does on a machine: --standalone picks a free port itself."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "lora101.cli",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_the_global_batch_must_split_evenly():
    assert per_process_batch(8, 2) == 4 and per_process_batch(3, 1) == 3
    with pytest.raises(BatchSplitError, match=r"--batch-size 3 .* 2 processes"):
        per_process_batch(3, 2)


@pytest.mark.slow
def test_two_processes_train_as_one_write_once_and_resume(tmp_path, tiny_model, data):
    assert main(_args(tiny_model, data, tmp_path / "one")) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())

    out = tmp_path / "two"
    done = _torchrun(_args(tiny_model, data, out))
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((out / "report.json").read_text())
    assert done.stdout.count("wrote ") == 1  # rank 0 alone evaluates and writes
    assert all((out / f).is_file() for f in ADAPTER_FILES)
    assert (two["world_size"], two["global_batch"], two["per_process_batch"]) == (2, 2, 1)
    assert (one["world_size"], one["global_batch"]) == (1, 2)
    assert two["steps"] == one["steps"] == STEPS and two["tokens_per_s"] > 0
    assert two["loss"]["steps"] == one["loss"]["steps"] == list(range(1, STEPS + 1))
    first, *rest = zip(two["loss"]["values"], one["loss"]["values"], strict=True)
    assert first[0] == pytest.approx(first[1], rel=BEFORE_UPDATE_RTOL)
    for got, want in rest:
        assert got == pytest.approx(want, rel=AFTER_UPDATE_RTOL)

    # An interruption after step 2: the last checkpoint, the adapter and the report are lost.
    shutil.rmtree(out / "checkpoints" / f"checkpoint-{STEPS}")
    for f in (*ADAPTER_FILES, "report.json"):
        (out / f).unlink()
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-2"
    done = _torchrun(_args(tiny_model, data, out, "--resume"))
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["world_size"] == 2 and resumed["steps"] == STEPS
    assert resumed["resumed_from"] == "checkpoint-2"  # it continued from step 2, not from the start
    assert resumed["loss"]["steps"] == two["loss"]["steps"]  # with the whole history
    assert resumed["before"] == two["before"]
    # the optimizer, schedule, data order and each process's random state come back with the checkpoint
    tail = dict(zip(two["loss"]["steps"], two["loss"]["values"], strict=True))
    for step, value in zip(resumed["loss"]["steps"], resumed["loss"]["values"], strict=True):
        assert value == pytest.approx(tail[step], rel=BEFORE_UPDATE_RTOL)
