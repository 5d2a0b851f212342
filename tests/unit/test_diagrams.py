"""lora101.diagrams: each figure renders to PNG, carries the labels a learner needs, and memory_breakdown
draws exactly what lora101.memory.estimate_memory predicts."""

from __future__ import annotations

import io

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from lora101 import diagrams  # noqa: E402
from lora101.memory import estimate_memory  # noqa: E402


def _png_and_text(fig) -> tuple[bytes, str]:
    """Render ``fig`` to PNG (fails if anything cannot be drawn) and return it with all its texts joined."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    texts = " | ".join(t.get_text() for t in fig.findobj(Text))
    plt.close(fig)
    return buffer.getvalue(), texts


def test_lora_bypass_labels_frozen_and_trained_and_computes_the_scale():
    png, text = _png_and_text(diagrams.lora_bypass(r=4, alpha=32))
    assert png.startswith(b"\x89PNG")
    for label in (
        "frozen",
        "trained",
        "alpha/r",
        "h = W x + (alpha/r) B A x",
        "W  (d x k)",
        "A  (4 x k)",
        "B  (d x 4)",
    ):
        assert label in text, f"{label!r} missing from the diagram's texts: {text}"
    assert "32/4 = 8" in text  # alpha/r is computed, not copied
    _, sized = _png_and_text(diagrams.lora_bypass(r=8, alpha=16, d=576, k=192))
    assert "W  (576 x 192)" in sized and "A  (8 x 192)" in sized and "16/8 = 2" in sized


@pytest.mark.parametrize("bad", [{"r": 0}, {"r": 2.5}, {"alpha": -1}, {"d": 0}])
def test_lora_bypass_rejects_bad_arguments_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        diagrams.lora_bypass(**bad)


def test_qlora_dataflow_shows_storage_dequantisation_and_where_gradients_go():
    png, text = _png_and_text(diagrams.qlora_dataflow())
    assert png.startswith(b"\x89PNG")
    for label in (
        "NF4",
        "4 bits",
        "absmax",
        "double-quantised",
        "de-quantise",
        "bf16",
        "fp32, trained",
        "gradients flow only into A and B",
        "frozen",
    ):
        assert label in text, f"{label!r} missing from the diagram's texts: {text}"
    _, fp32 = _png_and_text(diagrams.qlora_dataflow(compute_dtype="fp32"))
    assert "to fp32" in fp32
    with pytest.raises(ValueError, match="compute_dtype"):
        diagrams.qlora_dataflow(compute_dtype="int4")
    assert "16-bit" not in text  # the course keeps adapters in fp32 (PEFT upcasts 16-bit adapters)
    _, bf16_adapters = _png_and_text(diagrams.qlora_dataflow(adapter_dtype="bf16"))
    assert "bf16, trained" in bf16_adapters
    with pytest.raises(ValueError, match="adapter_dtype"):
        diagrams.qlora_dataflow(adapter_dtype="int8")


def test_memory_breakdown_draws_the_estimates_of_lora101_memory():
    fig = diagrams.memory_breakdown("Llama-2-7B", r=16, batch_size=2, seq_len=256, optimizer="adamw-8bit")
    budgets = fig.budgets
    expected = {
        label: estimate_memory("Llama-2-7B", m, r=16, batch_size=2, seq_len=256, optimizer="adamw-8bit")
        for label, m in (("full FT", "full"), ("LoRA", "lora"), ("QLoRA", "qlora"))
    }
    assert budgets == expected
    ax = fig.axes[0]
    # The top of each stacked bar is the budget's total, in GB.
    tops = {}
    for bar in ax.patches:
        x = round(bar.get_x() + bar.get_width() / 2)
        tops[x] = max(tops.get(x, 0.0), bar.get_y() + bar.get_height())
    for i, label in enumerate(expected):
        assert tops[i] == pytest.approx(expected[label].total / 1e9, rel=1e-9)
    png, text = _png_and_text(fig)
    assert png.startswith(b"\x89PNG")
    for label in ("weights", "gradients", "optimizer states", "activations", "full FT", "LoRA", "QLoRA"):
        assert label in text
    assert f"{expected['QLoRA'].total / 1e9:.3g} GB" in text
    assert "master weights" not in text  # only drawn when master_weights=True
    _, with_master = _png_and_text(
        diagrams.memory_breakdown("SmolLM2-135M", unit="MB", master_weights=True, precision="bf16")
    )
    assert "fp32 master weights" in with_master


def test_memory_breakdown_rejects_bad_arguments_by_name():
    with pytest.raises(ValueError, match="unit"):
        diagrams.memory_breakdown(unit="TB")
    with pytest.raises(ValueError, match="model"):
        diagrams.memory_breakdown("GPT-9")
