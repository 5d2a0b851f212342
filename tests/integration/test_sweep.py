"""lora101.sweep and `lora101 sweep` (alias `lora101 bench sweep`): the plan, argument checks, no overwrite,
teacher-forced scoring, and one tiny real sweep that writes a well-formed results file."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lora101 import sweep
from lora101.cli import main
from lora101.sweep import ALL_LINEAR, QV, Run, Settings


def test_plan_lists_each_run_once_with_all_its_groups():
    runs = sweep.plan()
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    by_name = {r.name: r for r in runs}
    assert set(by_name["LoRA r=16"].groups) == {"method", "lr", "rank", "targets", "alpha", "wrong_tool"}
    assert set(by_name["full FT lr=5e-05"].groups) == {"method", "lr"}
    assert [r.rank for r in sweep.plan(groups=["rank"])] == list(sweep.RANKS)
    assert all(r.alpha == 2 * r.rank for r in sweep.plan(groups=["rank"]))
    assert {r.method for r in sweep.plan(groups=["method"])} == {"none", "full", "lora", "qlora"}
    wrong = {(r.base, r.data) for r in sweep.plan(groups=["wrong_tool"])}
    assert wrong == {("pretrained", "clean"), ("random", "clean"), ("pretrained", "noisy")}


def test_targets_compared_at_equal_parameter_budget():
    r_all = sweep.equal_budget_rank(16, QV, ALL_LINEAR)
    assert r_all == 3
    qv, al = sweep.adapter_parameters(16, QV), sweep.adapter_parameters(r_all, ALL_LINEAR)
    assert qv == 30 * 16 * ((576 + 576) + (576 + 192))  # q: 576 -> 576, v: 576 -> 192, 30 blocks
    assert abs(al - qv) / qv < 0.01
    runs = {r.targets: r for r in sweep.plan(groups=["targets"]) if r.rank in (3, 16)}
    assert runs[QV].rank == 16 and runs[ALL_LINEAR].rank in (3, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps: must be a positive integer"),
        (dict(batch_size=1.5), "batch_size: must be a positive integer"),
        (dict(lr=0), "lr: must be a learning rate"),
        (dict(full_lr=2.0), "full_lr: must be a learning rate"),
        (dict(noise=0), "noise: must be a fraction"),
        (dict(threads=-1), "threads: must be an integer >= 0"),
        (dict(eval_examples=5000), "eval_examples: must be at most 2000"),
        (dict(seeds=()), "seeds: must be distinct integers"),
        (dict(seeds=(1, 1)), "seeds: must be distinct integers"),
        (dict(seeds=(0, -2)), "seeds: must be distinct integers"),
    ],
)
def test_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Settings(**kwargs)


def test_runs_refuse_bad_values():
    with pytest.raises(ValueError, match="method must be one of"):
        Run("x", method="prefix")
    with pytest.raises(ValueError, match="targets"):
        sweep.target_modules("q_proj,attention")
    with pytest.raises(ValueError, match="groups"):
        sweep.plan(groups=["ranks"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps: must be a positive integer"),
        (["--eval-examples", "-3"], "--eval-examples: must be a positive integer"),
        (["--lr", "3"], "--lr: must be a learning rate"),
        (["--groups", "rank,colour"], "--groups: ['colour'] not understood"),
        (["--ranks", "1,two"], "--ranks: '1,two' is not a comma-separated list"),
        (["--ranks", "0,4"], "--ranks: give positive integers"),
        (["--ranks", "512"], "--ranks: at most 256"),
        (["--alphas", ""], "--alphas: give positive integers"),
        (["--seeds", "0,x"], "--seeds: '0,x' is not a comma-separated list"),
        (["--seeds", "-1"], "--seeds: give integers >= 0"),
        (["--seeds", "1,1"], "--seeds: must be distinct integers"),
        (["--resume"], "--resume: "),
    ],
)
def test_cli_names_the_bad_option(tmp_path, capsys, args, message):
    out = tmp_path / "r.json"
    assert main(["sweep", "--output", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lora101 sweep: error: ") and message in err, err
    assert not out.exists()


def test_bench_sweep_is_the_same_command(tmp_path, capsys):
    """Earlier versions of lesson 6 and their results files spell it `lora101 bench sweep`: that keeps working, word for word."""
    argv = ["--output", str(tmp_path / "r.json"), "--ranks", "0,4"]
    assert main(["sweep", *argv]) == 2
    direct = capsys.readouterr()
    assert main(["bench", "sweep", *argv]) == 2
    assert capsys.readouterr() == direct
    from lora101.cli import build_parser
    from lora101.cli.sweep import command_line

    bench_argv = ["bench", "sweep", "--output", "r.json", "--steps", "2"]
    bench = command_line(build_parser(bench_argv).parse_args(bench_argv))
    assert bench == command_line(build_parser(bench_argv[1:]).parse_args(bench_argv[1:]))
    assert bench.startswith("lora101 sweep --output r.json")


def test_cli_checks_the_output_path(tmp_path, capsys):
    assert main(["sweep", "--output", str(tmp_path / "r.txt")]) == 2
    assert "--output: " in capsys.readouterr().err
    assert main(["sweep", "--output", str(tmp_path / "missing" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", "--output", str(tmp_path)]) == 2  # a folder
    assert "must end in .json" in capsys.readouterr().err


def test_cli_never_overwrites_without_force(tmp_path, capsys):
    out = tmp_path / "kept.json"
    out.write_text('{"mine": true}')
    assert main(["sweep", "--output", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "pass --force" in err
    assert out.read_text() == '{"mine": true}'
    from lora101.cli import build_parser
    from lora101.cli.sweep import parse

    argv = ["sweep", "--output", str(out), "--force", "--groups", "rank", "--ranks", "2"]
    runs, settings, path = parse(build_parser(argv).parse_args(argv))
    assert path == out and [r.rank for r in runs] == [2] and settings == Settings(seeds=(0, 1, 2))


def test_a_stopped_sweeps_runs_are_never_overwritten(tmp_path, capsys):
    out = tmp_path / "r.json"
    partial = tmp_path / "r.json.partial"
    partial.write_text('{"runs": ["mine"]}')
    assert main(["sweep", "--output", str(out), "--groups", "rank", "--ranks", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds the runs of a stopped sweep" in err and "--resume" in err and "--force" in err
    assert partial.read_text() == '{"runs": ["mine"]}' and not out.exists()
    assert main(["sweep", "--output", str(out), "--resume", "--steps", "1"]) == 2  # not this sweep's file
    assert "--resume: " in capsys.readouterr().err and partial.read_text() == '{"runs": ["mine"]}'


def test_load_results_reads_one_seed_files_in_the_seeds_layout(tmp_path):
    v1 = {
        "format": "lora101-sweep/1",
        "machine": {},
        "versions": {},
        "settings": {"seed": 4},
        "runs": [{**dataclasses.asdict(Run("a")), "result": {"eval": {}}}],
    }
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    doc = sweep.load_results(tmp_path / "v1.json")
    assert doc["seeds"] == [4] and doc["runs"][0]["seed"] == 4


def test_load_results_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        sweep.load_results(bad)
    with pytest.raises(FileNotFoundError, match="lora101 sweep --output"):
        sweep.load_results(tmp_path / "none.json")


@pytest.mark.parametrize("name", ["sweep_methods.json", "sweep_knobs.json"])
def test_lesson_6s_stored_sweeps_repeat_every_setting_over_three_seeds(name, monkeypatch):
    """Lesson 6's verdicts rest on these files: every setting at every seed of at least three, 100 or more
    held-out examples, the same held-out set for all (the untrained base scores alike at every seed)."""
    from pathlib import Path

    from lora101.colab import stored_results
    from lora101.sweep_stats import by_setting

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the repository root, as a learner runs from
    doc = sweep.load_results(stored_results(name, "lora101 sweep"))
    assert doc["format"] == sweep.FORMAT and doc["complete"]
    assert len(doc["seeds"]) >= 3 and doc["settings"]["eval_examples"] >= 100
    for setting, runs in by_setting(doc["runs"]).items():
        assert sorted(run["seed"] for run in runs) == sorted(doc["seeds"]), setting
        assert all(run["result"]["eval"]["n"] == doc["settings"]["eval_examples"] for run in runs), setting
    if name == "sweep_methods.json":  # the untrained base: one score whatever the seed, so one held-out set
        base = by_setting(doc["runs"])["base (untrained)"]
        assert (
            len(base) == len(doc["seeds"]) and len({run["result"]["eval"]["test_loss"] for run in base}) == 1
        )
    with pytest.raises(FileNotFoundError, match="lora101 sweep"):
        stored_results("nothing.json", "lora101 sweep --output lessons/results/nothing.json")


@pytest.mark.slow
def test_teacher_forced_exact_match_is_greedy_decoding(base_model_dir):
    """exact_match counts an example iff greedy generation reproduces its answer: the model's own greedy
    output scores 1, the same answer with one character changed scores 0."""
    import torch
    from datasets import Dataset

    from lora101.data import prompt_text, tokenize_example
    from lora101.evaluate import generate, teacher_forced
    from lora101.models import load_model, load_tokenizer
    from lora101.tasks.contracts import build_messages

    torch.manual_seed(0)
    tok = load_tokenizer()
    model = load_model(precision="fp32").eval()
    sentence = "Extract: Ann pays Bo 5 EUR."
    own = generate(
        model, tok, [prompt_text(tok, build_messages(sentence))], max_new_tokens=120, progress=False
    )[0]
    changed = own[:-1] + ("X" if own[-1] != "X" else "Y")
    rows = [tokenize_example(tok, build_messages(sentence), answer) for answer in (own, changed)]
    scores = [teacher_forced(model, tok, Dataset.from_list([row])) for row in rows]
    assert scores[0]["exact"] == 1 and scores[0]["token_accuracy"] == 1.0
    assert scores[1]["exact"] == 0 and scores[1]["token_accuracy"] < 1.0
    assert scores[1]["test_loss"] > scores[0]["test_loss"]


@pytest.mark.slow
def test_tiny_real_sweep_writes_a_well_formed_results_file(base_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tiny.json"
    events = _record_the_runs_events(monkeypatch)
    argv = [
        "sweep",
        "--output",
        str(out),
        "--groups",
        "rank",
        "--ranks",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--eval-examples",
        "3",
        "--threads",
        "1",
        "--seeds",
        "0",
    ]
    assert main(argv) == 0
    doc = sweep.load_results(out)
    assert doc["complete"] is True and doc["format"] == sweep.FORMAT and doc["seeds"] == [0]
    assert doc["command"].startswith("lora101 sweep --output ") and "--steps 2" in doc["command"]
    assert doc["machine"]["cpu_cores"] >= 1 and doc["machine"]["cpu"]
    assert doc["versions"]["torch"] and doc["versions"]["peft"]
    assert doc["settings"]["steps"] == 2 and doc["settings"]["eval_examples"] == 3
    [run] = doc["runs"]
    assert run["rank"] == 2 and run["alpha"] == 4 and run["groups"] == ["rank"]
    res = run["result"]
    assert (
        res["train"]["steps"] == 2 and len(res["train"]["losses"]) == 2 and res["train"]["tokens_per_s"] > 0
    )
    assert res["parameters"]["trainable"] == sweep.adapter_parameters(2, ALL_LINEAR)
    assert res["eval"]["n"] == 3 and 0 <= res["eval"]["token_accuracy"] <= 1 and res["eval"]["test_loss"] > 0
    assert res["peak_memory_bytes"] > res["rss_before_model_bytes"] > 0 and res["threads"] == 1
    assert not (tmp_path / "tiny.json.partial").exists()
    assert events == [1, 2], "each optimizer step reaches the parent as an event while the run's process runs"
    printed = capsys.readouterr().out
    assert "LoRA r=2" in printed and f"written {out}" in printed
    import matplotlib

    matplotlib.use("Agg")
    from lora101 import plots

    for draw in (
        plots.plot_rank_sweep,
        plots.plot_sweep_bars,
        plots.plot_training_losses,
        plots.plot_method_comparison,
    ):
        fig = draw(doc["runs"], title=draw.__name__)
        assert fig.axes and fig.axes[0].has_data(), draw.__name__
    before = out.read_text()
    assert main(argv) == 2  # a second run refuses to replace the results
    assert out.read_text() == before
    _resume_a_stopped_two_seed_sweep(doc, argv, out, capsys)


def _record_the_runs_events(monkeypatch) -> list:
    """The events the sweep's run processes send (lora101.fresh_process), as the parent receives them."""
    from lora101 import fresh_process

    events, real = [], fresh_process.run

    def recording(function_path, spec, *, on_event, **kwargs):
        def both(event):
            events.append(event)
            on_event(event)

        return real(function_path, spec, on_event=both, **kwargs)

    monkeypatch.setattr(fresh_process, "run", recording)
    return events


def _resume_a_stopped_two_seed_sweep(one_seed, argv, out, capsys):
    """A sweep over seeds 0 and 1 stopped after seed 0 (its .partial file holds that run, as run_sweep
    writes it): --resume runs seed 1 only, and the table then reports the setting's mean and range."""
    argv = [*argv[:-1], "0,1", "--resume"]
    partial = out.with_name(out.name + ".partial")
    stopped = {**one_seed, "complete": False, "finished": None, "seeds": [0, 1]}
    partial.write_text(json.dumps(stopped))
    out.unlink()
    assert main(argv) == 0
    doc = sweep.load_results(out)
    assert doc["seeds"] == [0, 1] and [r["seed"] for r in doc["runs"]] == [0, 1]
    assert doc["runs"][0] == one_seed["runs"][0]  # kept, not run again
    assert len(doc["resumed"]) == 1 and doc["command"] == one_seed["command"]
    assert "--resume" not in doc["command"] and not partial.exists()
    first, second = (r["result"] for r in doc["runs"])
    assert first["eval"]["n"] == second["eval"]["n"] == 3  # the same held-out examples for both seeds
    assert first["train"]["losses"] != second["train"]["losses"]  # other training examples, other init
    printed = capsys.readouterr().out
    assert "1 runs x 2 seeds" in printed and "LoRA r=2" in printed and "    2 " in printed  # one row, 2 seeds
