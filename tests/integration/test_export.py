"""lora101 export: a written F16 GGUF reloads (transformers' GGUF loader) to the merged weights exactly, and
every refusal is one line with exit status 2 that leaves the learner's files as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora101.cli import main
from lora101.models import DEFAULT_MODEL, resolve_model

RANK, ALPHA = 4, 12  # alpha != r: a lost scaling would show
TARGETS = ("q_proj", "v_proj")  # q is permuted in GGUF, v is not: both paths are checked


def write_adapter(folder, base: str) -> None:
    """A PEFT adapter with non-zero B for ``base``'s shapes, written without loading a model."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(DEFAULT_MODEL).path)
    out = {"q_proj": config.num_attention_heads, "v_proj": config.num_key_value_heads}
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for target in TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            d_out = out[target] * config.head_dim
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, config.hidden_size, generator=g) * 0.05
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(d_out, RANK, generator=g) * 0.05
    folder.mkdir(parents=True)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), task_type="CAUSAL_LM")
    lora.base_model_name_or_path = base
    lora.save_pretrained(str(folder))
    save_file(tensors, str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "adapter"
    write_adapter(folder, resolve_model(DEFAULT_MODEL).path)
    return folder


def test_f16_gguf_reloads_to_the_merged_weights_exactly(adapter, tmp_path, capsys):
    """W' = W + (alpha/r) B A into the de-quantised base W, in F16 (norms in F32), read back bit for bit."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lora101.finetune import dequantized_base

    out = tmp_path / "shipped"
    assert main(["export", str(adapter), "--output", str(out), "--format", "gguf", "--gguf-type", "f16"]) == 0
    assert "model-F16.gguf" in capsys.readouterr().out
    back = AutoModelForCausalLM.from_pretrained(str(out), gguf_file="model-F16.gguf", dtype=torch.float32)
    loaded = back.state_dict()
    expected = dequantized_base(DEFAULT_MODEL, "cpu").state_dict()
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for key in lora:
        if ".lora_A." in key:
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            b_times_a = lora[key.replace("lora_A", "lora_B")] @ lora[key]
            assert (ALPHA / RANK * b_times_a).abs().max() > 1e-3, "the test adapter must change the weights"
            expected[target] = expected[target] + b_times_a * (
                ALPHA / RANK
            )  # PEFT's order: (B @ A) * scaling
    for name, weight in expected.items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        want = weight if weight.ndim == 1 else weight.half().float()  # norms are stored in F32
        assert torch.equal(loaded[name], want), name


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_missing_adapter_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    assert "ADAPTER_DIR" in error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "adapter_config.json" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_an_adapter_of_another_base_is_refused(tmp_path, capsys):
    write_adapter(tmp_path / "other", "HuggingFaceTB/SmolLM2-360M-Instruct")
    assert main(["export", str(tmp_path / "other"), "--output", str(tmp_path / "out")]) == 2
    line = error_line(capsys)
    assert "SmolLM2-360M-Instruct" in line and "--model" in line


def test_an_unknown_type_or_format_is_one_line(adapter, tmp_path, capsys):
    for extra, what in (
        (["--format", "gguf", "--gguf-type", "q4_k"], "--gguf-type"),
        (["--format", "onnx"], "--format"),
    ):
        assert main(["export", str(adapter), "--output", str(tmp_path / "out"), *extra]) == 2
        assert error_line(capsys).startswith(f"lora101 export: error: {what}")
    assert not (tmp_path / "out").exists()


def test_merging_into_4bit_weights_is_refused_with_why_and_what_to_do(tmp_path, capsys):
    four_bit = tmp_path / "base-nf4"
    four_bit.mkdir()
    config = json.loads(Path(resolve_model(DEFAULT_MODEL).path, "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (four_bit / "config.json").write_text(json.dumps(config))
    write_adapter(tmp_path / "adapter", str(four_bit))
    assert (
        main(["export", str(tmp_path / "adapter"), "--model", str(four_bit), "--output", str(tmp_path / "o")])
        == 2
    )
    line = error_line(capsys)
    assert "4 bits" in line and "round" in line and "16-bit model" in line
    assert not (tmp_path / "o").exists()


def test_an_existing_output_is_never_overwritten(adapter, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(adapter), "--output", str(out)]) == 2
    assert "--output" in error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "lora101 export runs/contracts --output" in text
