"""lora101.finetune.run, the one fine-tune job: bad input ends in one line before anything is loaded or
written; nothing in an output folder is lost; --resume checks the configuration, skips a damaged newest
checkpoint and keeps the whole loss history; Ctrl-C says what was saved and how to continue."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import save_file

from lora101 import finetune as ft
from lora101.cli import main
from lora101.errors import ConfigError, Interrupted, OutputError
from lora101.finetune import recipe

SMALL = dict(rank=4, alpha=16, batch_size=2, lr=3e-3, device="cpu", task=None)


def _data(tmp_path, lines=None):
    lines = lines or [
        json.dumps({"prompt": f"Code word for {w}?", "response": w.upper()}) for w in "abcdefgh"
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _cli(tmp_path, *extra, data=None, out="out"):
    data = data or _data(tmp_path)
    argv = ["finetune", "--data", str(data), "--output", str(tmp_path / out), "--steps", "4"]
    argv += ["--batch-size", "2", "--rank", "4", "--alpha", "16", "--lr", "0.003", "--device", "cpu", *extra]
    return main(argv)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("lora101 finetune: error: ") and err.count("\n") == 1 and "Traceback" not in err, (
        err
    )
    return err


# ------------------------------------------------------------------------------------------------
# The configuration


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (dict(rank=0), "rank"),
        (dict(eval_size=0), "eval_size"),
        (dict(eval_size=-1), "eval_size"),
        (dict(train_size=0), "train_size"),
        (dict(targets="bogus"), "targets"),
        (dict(device="tpu9"), "device"),
        (dict(model="/nope"), "model"),
        (dict(precision="int8"), "precision"),
        (dict(lr=0), "lr"),
        (dict(task="poems"), "task"),
        (dict(eval_data="x.jsonl"), "eval_data"),
    ],
)
def test_a_bad_setting_raises_a_config_error_carrying_its_field(settings, field):
    with pytest.raises(ConfigError) as caught:
        ft.FinetuneConfig(**settings)
    assert caught.value.field == field and caught.value.message and field not in caught.value.message[:1]


def test_the_default_checkpoint_interval_loses_at_most_a_tenth_of_a_run():
    for steps in (1, 7, 10, 50, 123, 400):
        config = ft.FinetuneConfig(steps=steps)
        assert config.save_steps <= max(1, steps // 10), (steps, config.save_steps)


# ------------------------------------------------------------------------------------------------
# Bad data: one line naming the file and line, before the model loads and before --output exists


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"prompt": "caf\xe9", "response": "b"}\n', "not UTF-8"),
        (b"[" * 100_000 + b"\n", "nested too deeply"),
        (b'{"prompt": "a \\ud800 b", "response": "b"}\n', "surrogate"),
    ],
)
def test_unreadable_lines_are_refused_naming_file_and_line(tmp_path, capsys, raw, message):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"prompt": "a", "response": "b"}\n' + raw)
    assert _cli(tmp_path, data=data) == 2
    err = _one_error_line(capsys)
    assert f"{data}:2: " in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_10_mb_line_is_refused_before_it_is_tokenised(tmp_path, capsys, base_model_dir):
    lines = [json.dumps({"prompt": "a", "response": "b"})] * 7
    lines.append(json.dumps({"prompt": "word " * 2_000_000, "response": "b"}))
    data = _data(tmp_path, lines)
    start = time.perf_counter()
    assert _cli(tmp_path, data=data) == 2
    err = _one_error_line(capsys)
    assert f"{data}:8: " in err and "characters" in err and "--max-length" in err, err
    assert not (tmp_path / "out").exists()
    print(f"refused in {time.perf_counter() - start:.1f} s")  # tokenising 10 MB would take minutes


# ------------------------------------------------------------------------------------------------
# The output folder: nothing is lost


def _fake_run(out, config: ft.FinetuneConfig, *, finished: bool):
    (out / recipe.CHECKPOINTS).mkdir(parents=True)
    (out / recipe.RUN_CONFIG).write_text(json.dumps(config.to_dict()))
    if finished:
        (out / recipe.REPORT).write_text(json.dumps({"steps": config.steps}))
        for name in ft.ADAPTER_FILES:
            (out / name).write_text("{}")


def test_a_folder_holding_anything_else_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for flags in ((), ("--overwrite",)):
        assert _cli(tmp_path, *flags) == 2
        assert "is not empty (notes.txt)" in _one_error_line(capsys)
    assert (
        sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    )


def test_an_unfinished_run_is_only_resumed_and_a_finished_one_never(tmp_path, capsys):
    data = _data(tmp_path)
    config = ft.FinetuneConfig.for_steps(4, data=str(data), **SMALL)
    _fake_run(tmp_path / "out", config, finished=False)
    assert _cli(tmp_path, data=data) == 2
    assert "holds an unfinished run: pass --resume" in _one_error_line(capsys)
    assert _cli(tmp_path, "--resume", "--rank", "8", data=data) == 2  # another configuration
    err = _one_error_line(capsys)
    assert "another configuration (rank: 4 -> 8)" in err, err
    assert _cli(tmp_path, "--resume", data=data) == 2  # the right one, but no checkpoint
    assert "no intact checkpoint" in _one_error_line(capsys)

    _fake_run(tmp_path / "done", config, finished=True)
    assert _cli(tmp_path, "--resume", "--steps", "8", data=data, out="done") == 2
    assert "holds a finished run (4 steps): nothing to continue" in _one_error_line(capsys)
    assert _cli(tmp_path, "--overwrite", "--rank", "8", data=data, out="done") == 2
    assert "finished run of another configuration (rank: 4 -> 8)" in _one_error_line(capsys)
    assert _cli(tmp_path, data=data, out="done") == 2
    assert "already holds an adapter" in _one_error_line(capsys)
    with pytest.raises(OutputError):  # the same checks for every caller of the job
        ft.run(config, output_dir=tmp_path / "done")


# ------------------------------------------------------------------------------------------------
# Checkpoints


def _checkpoint(folder, step: int):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    save_file({"w": torch.zeros(64, 64)}, str(path / "adapter_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"x": torch.zeros(256)}, path / name)
    return path


@pytest.mark.parametrize("damaged", ["optimizer.pt", "adapter_model.safetensors", "trainer_state.json"])
def test_a_checkpoint_cut_short_is_skipped_for_the_previous_intact_one(tmp_path, damaged):
    older, newer = _checkpoint(tmp_path, 2), _checkpoint(tmp_path, 4)
    assert ft.resumable_checkpoint(tmp_path) == (newer, [])
    data = (newer / damaged).read_bytes()
    (newer / damaged).write_bytes(data[: len(data) // 2])
    found, skipped = ft.resumable_checkpoint(tmp_path)
    assert found == older and len(skipped) == 1 and skipped[0].startswith(f"checkpoint-4: {damaged}"), skipped


def test_a_checkpoint_of_several_processes_has_one_rng_state_a_process(tmp_path):
    """torchrun: transformers writes rng_state_0.pth, rng_state_1.pth, ... instead of rng_state.pth."""
    path = _checkpoint(tmp_path, 2)
    (path / "rng_state.pth").unlink()
    for rank in (0, 1):
        torch.save({"x": torch.zeros(256)}, path / f"rng_state_{rank}.pth")
    assert ft.checkpoint_problem(path) is None
    (path / "rng_state_1.pth").write_bytes(b"PK")
    assert ft.checkpoint_problem(path).startswith("rng_state_1.pth is missing or cut short")


# ------------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_prints_what_was_saved_and_the_resume_command(tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-2"

    def stopped(*args, **kwargs):
        raise Interrupted(f"{checkpoint} is saved", checkpoint)

    monkeypatch.setattr(ft, "run", stopped)
    assert _cli(tmp_path) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{checkpoint} is saved" in err, err
    assert (
        "lora101 finetune --steps 4 --rank 4" in err
        and "--lr 0.003" in err
        and err.strip().endswith("--resume")
    )


class _StopAt:
    """A TrainerCallback that presses Ctrl-C when training reaches ``step``."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class StopAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return StopAt()


@pytest.mark.slow
def test_an_interrupted_run_resumes_past_a_damaged_checkpoint_with_its_whole_loss_history(tmp_path, capsys):
    data = _data(tmp_path)
    config = ft.FinetuneConfig.for_steps(4, data=str(data), save_steps=1, **SMALL)
    out = tmp_path / "out"
    with pytest.raises(Interrupted) as stop:
        ft.run(config, evaluate=False, output_dir=out, callbacks=[_StopAt(3)], progress=False)
    assert stop.value.checkpoint.name == "checkpoint-2" and "is saved" in stop.value.saved
    optimizer = out / "checkpoints" / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # the newest checkpoint, cut short
    report = ft.run(config, evaluate=False, output_dir=out, resume=True, progress=False)
    printed = capsys.readouterr().out
    assert "skipping checkpoint-2: optimizer.pt" in printed and "continuing from checkpoint-1" in printed
    assert report.resumed_from == "checkpoint-1" and report.train.global_step == 4
    written = json.loads((out / recipe.REPORT).read_text())
    assert written["loss"]["steps"] == [1, 2, 3, 4] and len(written["loss"]["values"]) == 4
    assert all((out / name).is_file() for name in (*ft.ADAPTER_FILES, "loss.png"))
    with pytest.raises(OutputError, match="finished run"):
        ft.run(config, evaluate=False, output_dir=out, resume=True, progress=False)


def test_ctrl_c_before_the_first_checkpoint_leaves_the_folder_as_it_was(
    tmp_path, monkeypatch, base_model_dir
):
    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "train", pressed)
    config = ft.FinetuneConfig.for_steps(4, data=str(_data(tmp_path)), **SMALL)
    with pytest.raises(Interrupted) as stop:
        ft.run(config, evaluate=False, model=object(), output_dir=tmp_path / "out", progress=False)
    assert stop.value.checkpoint is None and "nothing was saved" in stop.value.saved
    assert not (tmp_path / "out").exists()  # so the same command starts the run again
