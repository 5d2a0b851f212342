"""`make test` runs each test process and notebook kernel with one torch thread (TEST_THREADS=1). This checks
how much the numbers depend on the thread count, on the course's own model: a forward pass must be identical;
LoRA training steps may differ only by rounding (they do on CPUs with AVX-512 and AMX), so notebooks whose
stored outputs show trained numbers are executed with one thread, as CI runs them."""

from __future__ import annotations

import copy

import pytest
import torch

from lora101.lora import inject_lora, lora_state_dict
from lora101.models import load_model, load_tokenizer

pytestmark = pytest.mark.slow

TEXTS = [f"Date: 2023-07-{day:02d}\nHouse style: {day:02d}.07.2023<|im_end|>" for day in range(10, 18)]


def _with_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch():
    tokenizer = load_tokenizer()
    out = tokenizer(TEXTS, return_tensors="pt", padding=True)
    out["labels"] = out["input_ids"].clone()
    return out


@pytest.mark.parametrize("precision", ["fp32", "nf4"])
def test_logits_do_not_depend_on_the_thread_count(base_model_dir, batch, precision):
    model = load_model(precision=precision, device="cpu")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        one, two = (_with_threads(n, lambda: model(**inputs).logits) for n in (1, 2))
    assert torch.equal(one, two), f"{precision}: max difference {(one - two).abs().max().item():.3e}"


def test_lora_training_does_not_depend_on_the_thread_count(base_model_dir, batch):
    base = load_model(precision="fp32", device="cpu")

    def train():
        torch.manual_seed(0)
        model = inject_lora(copy.deepcopy(base), ["q_proj", "v_proj"], r=8, alpha=16)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        model.train()
        for _ in range(3):
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return lora_state_dict(model)

    one, two = _with_threads(1, train), _with_threads(2, train)
    # Not bit for bit on every CPU: on one with AVX-512 and AMX, 3 steps with 1 and with 2 threads ended
    # 5.4e-5 apart on weights of size 0.045 (1.2e-3 of the largest), from the order of the backward pass's sums.
    # That is why `make test` and the stored notebooks both use TEST_THREADS=1; here the difference must
    # stay a rounding difference, far below what one training step moves the weights.
    scale = max(one[k].abs().max().item() for k in one)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst <= 1e-2 * scale, f"LoRA weights after 3 steps differ by {worst:.2e} between 1 and 2 threads"
