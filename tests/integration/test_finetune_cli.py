"""`lora101 finetune`: bad data names file and line; a real tiny run writes adapter, report and plot; resume;
--task names a built-in task; the training options' defaults are FinetuneConfig's."""

from __future__ import annotations

import json
import shutil

import pytest
from code_words import PAIRS  # tests/helpers is on sys.path (tests/conftest.py)

from lora101.cli import main
from lora101.finetune import ADAPTER_FILES, FinetuneConfig, last_checkpoint
from lora101.tasks import DEFAULT_TASK, task_names


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _good(tmp_path):
    lines = [json.dumps({"prompt": p, "response": r}) for p, r in PAIRS[:6]]
    lines += [
        json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]})
        for p, r in PAIRS[6:]
    ]
    return _write(tmp_path / "good.jsonl", lines)


def _run(tmp_path, data, *extra, out="out"):
    settings = "--steps 4 --batch-size 2 --save-steps 2 --rank 4 --alpha 16 --lr 3e-3 --eval-fraction 0.25"
    paths = ["--data", str(data), "--output", str(tmp_path / out)]
    return main(["finetune", *paths, *settings.split(), "--max-new-tokens", "8", "--device", "cpu", *extra])


@pytest.mark.parametrize(
    "lines, line_no, message",
    [
        (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], 2, "malformed JSON"),
        (['{"prompt": "a", "response": "b"}', "", '{"prompt": "a"}'], 3, "missing or empty field"),
        (['["prompt", "response"]'], 1, "expected a JSON object"),
        (
            ['{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}'],
            1,
            "last message must be",
        ),
        (
            ['{"prompt": "a", "response": "b"}', '{"prompt": "' + "word " * 600 + '", "response": "b"}'],
            2,
            "longer than the context",
        ),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, capsys, base_model_dir, lines, line_no, message):
    bad = _write(tmp_path / "bad.jsonl", lines)
    assert _run(tmp_path, bad) == 2
    err = capsys.readouterr().err
    assert f"{bad}:{line_no}:" in err and message in err, err
    assert not (tmp_path / "out" / ADAPTER_FILES[0]).exists()


def test_empty_and_missing_files_are_named(tmp_path, capsys):
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    assert _run(tmp_path, empty) == 2
    assert f"{empty}: the file is empty" in capsys.readouterr().err
    assert _run(tmp_path, tmp_path / "nope.jsonl") == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_an_existing_adapter_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ADAPTER_FILES[0]).write_text("{}")
    assert _run(tmp_path, _good(tmp_path)) == 2
    err = capsys.readouterr().err
    assert (
        "already holds an adapter" in err and "--output" in err and "--resume" in err and "--overwrite" in err
    )
    assert (out / ADAPTER_FILES[0]).read_text() == "{}"


@pytest.mark.slow
def test_good_data_trains_reports_and_resumes(tmp_path, base_model_dir):
    data = _good(tmp_path)
    assert _run(tmp_path, data) == 0
    out = tmp_path / "out"
    assert all((out / f).is_file() for f in ADAPTER_FILES) and (out / "loss.png").is_file()
    report = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        assert 0 <= report[side]["exact_match"] <= 1 and report[side]["n"] == 2
    assert report["steps"] == 4 and report["tokens_per_s"] > 0 and report["peak_memory_bytes"] > 0
    assert report["train_examples"] == 6 and report["versions"]["peft"] and report["wall_s"] > 0
    assert report["loss"]["values"][-1] < report["loss"]["values"][0]

    # An interruption after step 2: the last two steps, the final checkpoint and the adapter are lost.
    shutil.rmtree(out / "checkpoint-4", ignore_errors=True)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    for f in ADAPTER_FILES + ("report.json",):
        (out / f).unlink()
    assert last_checkpoint(out / "checkpoints").name == "checkpoint-2"
    assert _run(tmp_path, data, "--resume") == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["steps"] == 4 and resumed["resumed_from"] == "checkpoint-2"  # it continued, not restarted
    assert resumed["loss"]["steps"] == report["loss"]["steps"]  # the whole history, the checkpoint's included
    assert resumed["loss"]["values"][:2] == report["loss"]["values"][:2]
    assert resumed["before"] == report["before"]
    assert 0 < resumed["tokens"] < report["tokens"]  # tokens/s counts the resumed steps only, over their time
    assert all((out / f).is_file() for f in ADAPTER_FILES)


def test_an_unknown_task_is_refused_naming_the_option_and_the_known_tasks(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["finetune", "--task", "poems", "--output", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--task" in err and "poems" in err and all(name in err for name in task_names()), err
    with pytest.raises(SystemExit):
        main(
            [
                "finetune",
                "--task",
                DEFAULT_TASK,
                "--data",
                str(_good(tmp_path)),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert "--data: not allowed with argument --task" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_training_defaults_are_the_configs_and_its_schedule_follows_the_steps():
    from lora101.cli import build_parser

    args = build_parser().parse_args(["finetune", "--output", "out"])
    config = FinetuneConfig()
    for name in (
        "model",
        "precision",
        "rank",
        "alpha",
        "targets",
        "steps",
        "batch_size",
        "lr",
        "seed",
    ):
        assert getattr(args, name) == getattr(config, name), name
    assert (
        args.task is None and args.mixed_precision == config.mixed_precision and args.device == config.device
    )
    assert args.save_steps is None  # every tenth of the steps
    short, long = FinetuneConfig.for_steps(4, save_steps=40), FinetuneConfig.for_steps(100, rank=8)
    assert (short.warmup_steps, short.logging_steps, short.save_steps) == (1, 1, 4)  # a checkpoint at the end
    # an interruption loses at most a tenth of the run
    assert (long.warmup_steps, long.logging_steps, long.save_steps, long.rank) == (10, 5, 10, 8)
    assert all(FinetuneConfig(steps=n).save_steps <= max(1, n / 10) for n in (1, 5, 9, 10, 50, 399, 400))


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--steps", "0", "--steps: must be a positive integer"),
        ("--lr", "-1", "--lr: must be between 0 and 1"),
        ("--batch-size", "0", "--batch-size: must be a positive integer"),
        ("--eval-size", "0", "--eval-size: must be a positive integer"),
        ("--eval-size", "-1", "--eval-size: must be a positive integer"),
        ("--train-size", "0", "--train-size: must be a positive integer"),
        ("--targets", "bogus", "--targets: ['bogus'] not understood"),
        ("--device", "tpu9", "--device: 'tpu9' is not a torch device"),
        ("--model", "/nope", "--model: /nope does not exist"),
    ],
)
def test_a_bad_training_option_is_refused_naming_the_option(tmp_path, capsys, option, value, named):
    assert main(["finetune", option, value, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lora101 finetune: error: ") and named in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written
