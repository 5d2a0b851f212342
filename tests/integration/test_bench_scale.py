"""lora101 bench scale: the three methods on a Llama-shaped random model, each in its own process, beside
lesson 1's prediction; the same code runs the 1B/8B measurements (CPU here, a GPU where one is lent)."""

from __future__ import annotations

import json

import pytest
import torch

from lora101.bench import scale
from lora101.cli import main
from lora101.memory import ModelShape, estimate_memory


@pytest.mark.parametrize("method", scale.METHODS)
def test_built_model_is_what_lesson_1_predicts(method):
    """Parameter counts of the built model agree with lesson 1's predictor for the same shapes."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model, config = scale._build("tiny", method, torch.device("cpu"), torch.float32, 64, checkpointing=False)
    predicted = estimate_memory(config, method, precision="fp32", r=scale.RANK, target_modules="all-linear")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == predicted.trainable_params
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    layers = config.num_hidden_layers * 7  # q, k, v, o, gate, up, down
    assert len(four_bit) == (layers if method == "qlora" else 0)
    assert not any(p.is_meta for p in model.parameters()), "a parameter was left on the meta device"
    if method == "qlora":
        assert all(m.weight.dtype == torch.uint8 for m in four_bit)
    else:
        assert sum(p.numel() for p in model.parameters() if not p.requires_grad) + trainable == (
            ModelShape.from_config(config).n_params + (trainable if method != "full" else 0)
        )
    ids = torch.randint(0, config.vocab_size, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_bench_writes_every_method_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "scale.json"
    args = ["bench", "scale", "--sizes", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1"]
    args += ["--device", "cpu", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "predicted" in printed and "qlora" in printed
    results = json.loads(out.read_text())
    assert [r["method"] for r in results["runs"]] == list(scale.METHODS)
    assert {"machine", "versions", "settings", "command", "notes"} <= set(results)
    assert results["settings"]["seed"] == scale.SEED and results["command"].startswith("lora101 bench scale")
    assert any("QLoRA's peak is" in note for note in results["notes"])
    for run in results["runs"]:
        assert (
            run["peak_bytes"] >= run["bytes_after_build"] > run["process_bytes"] > 0
            and run["tokens_per_s"] > 0
        )
        assert run["predicted_bytes"] == run["predicted"]["total"] > 0
        assert run["parameters"] == results["runs"][0]["parameters"]
    full, lora, qlora = results["runs"]
    assert full["trainable_parameters"] > lora["trainable_parameters"] == qlora["trainable_parameters"] > 0
    capsys.readouterr()
    assert main(args) == 2, "an existing results file is refused: one line, exit 2"
    assert "--force" in capsys.readouterr().err


def test_tinyllama_size_is_over_a_billion_parameters_and_fits_24_gb():
    """The size the stored CPU run uses, counted on the meta device (nothing allocated, nothing run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**scale.SIZES["1.1b"])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == ModelShape.from_config(config).n_params >= 1_000_000_000
    full = estimate_memory(
        config,
        "full",
        precision="fp32",
        r=scale.RANK,
        target_modules="all-linear",
        seq_len=256,
        gradient_checkpointing=True,
    )
    assert full.total < 19e9, "full fine-tuning in fp32 with AdamW must leave room on a 24 GB machine"


def test_bad_options_are_named(capsys):
    # one error line naming the option, exit status 2 (lora101.cli.main; no traceback)
    assert main(["bench", "scale", "--sizes", "3b"]) == 2
    assert "lora101 bench scale: error: --sizes: ['3b'] not among" in capsys.readouterr().err
    assert main(["bench", "scale", "--methods", "dora"]) == 2
    assert "lora101 bench scale: error: --methods:" in capsys.readouterr().err


def test_stored_run_is_over_a_billion_parameters_with_every_method(monkeypatch):
    """The stored results lessons 1 and 6 show: found from the repository root, one run per method."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    doc = scale.load_stored("memory_at_scale.json")
    assert [r["method"] for r in doc["runs"]] == list(scale.METHODS)
    assert all(r["parameters"] >= 1_000_000_000 and r["peak_bytes"] > 0 for r in doc["runs"])
    assert doc["command"].startswith("lora101 bench scale") and doc["settings"]["seed"] == scale.SEED
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        scale.load_stored("nothing.json")


def test_a_failed_download_on_colab_names_the_address_and_what_to_do(tmp_path, monkeypatch):
    import sys
    import urllib.error
    import urllib.request

    def refuse(url, filename):
        raise urllib.error.URLError("no network")

    monkeypatch.chdir(tmp_path)  # no results/ here
    monkeypatch.setitem(sys.modules, "google.colab", object())
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    with pytest.raises(
        FileNotFoundError, match=r"could not download https://.*memory_at_scale\.json.*results/"
    ):
        scale.load_stored("memory_at_scale.json")


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nf4", "--size", "0"], "--size: must be a positive multiple of 8"),
        (["nf4", "--repeats", "0"], "--repeats: must be a positive integer"),
        (["nf4", "--layers", "99"], "--layers: give integers from 0 to 29"),
        (["nf4", "--dtypes", "float8"], "--dtypes: unknown dtype"),
        (["nf4", "--device", "tpu9"], "--device: 'tpu9' is not a torch device"),
        pytest.param(["nf4", "--device", "cuda"], "--device: 'cuda' was asked for", marks=NO_CUDA),
        (["lora", "--r", "0"], "--r: must be a positive integer"),
        (["lora", "--repeats", "0"], "--repeats: must be a positive integer"),
        (["lora", "--shapes", "5x"], "--shapes: expected a list"),
        pytest.param(["lora", "--device", "cuda"], "--device: 'cuda' was asked for", marks=NO_CUDA),
        (["scale", "--seq-len", "0"], "--seq-len: must be a positive integer"),
        (["scale", "--device", "tpu9"], "--device: 'tpu9' is not a torch device"),
        (["finetune", "--steps", "0"], "--steps: must be a positive integer"),
        (["finetune", "--variants", "qlora,x"], "--variants: unknown ['x']"),
    ],
)
def test_every_benchmarks_bad_option_is_one_line_and_exit_2(capsys, argv, message):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"lora101 bench {argv[0]}: error: {err.split(': error: ', 1)[1]}" and err.count("\n") == 1
    assert message in err and "Traceback" not in err, err


def test_bench_scale_never_replaces_an_existing_output(tmp_path, capsys):
    out = tmp_path / "kept.json"
    out.write_text('{"mine": true}')
    assert main(["bench", "scale", "--sizes", "tiny", "--output", str(out)]) == 2
    assert "--output: " in capsys.readouterr().err and out.read_text() == '{"mine": true}'
