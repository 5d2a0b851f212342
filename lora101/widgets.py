"""ipywidgets explorers the lessons use. Each function returns a widget; the computation lives in the package modules."""

from __future__ import annotations

from lora101 import nf4
from lora101.decision import decide
from lora101.memory import PRESETS, estimate_memory
from lora101.plots import plot_memory_budget

# ---- lesson 1: the memory budget -----------------------------------------------------------------


def memory_budget_explorer(default_model: str = "Llama-2-7B"):
    """Sliders and menus for model size, rank, precision, optimizer, batch and sequence length; shows the
    full FT / LoRA / QLoRA budgets (``lora101.memory.estimate_memory``) as bars against common GPU sizes."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    def show(model, r, precision, optimizer, batch_size, seq_len, gradient_checkpointing, targets):
        settings = dict(
            precision=precision,
            optimizer=optimizer,
            batch_size=batch_size,
            seq_len=seq_len,
            gradient_checkpointing=gradient_checkpointing,
            r=r,
            target_modules=targets,
        )
        budgets = {m: estimate_memory(model, m, **settings) for m in ("full", "lora", "qlora")}
        plot_memory_budget(budgets, title=f"{model}: r={r}, batch {batch_size} x {seq_len} tokens")
        plt.show()

    return w.interactive(
        show,
        model=w.Dropdown(options=list(PRESETS), value=default_model),
        r=w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128], value=8),
        precision=w.ToggleButtons(options=["bf16", "fp16", "fp32"], value="bf16"),
        optimizer=w.Dropdown(
            options=["adamw", "adamw-16bit", "adamw-8bit", "sgd-momentum", "sgd"], value="adamw"
        ),
        batch_size=w.IntSlider(value=1, min=1, max=32),
        seq_len=w.Dropdown(options=[128, 256, 512, 1024, 2048, 4096], value=512),
        gradient_checkpointing=w.Checkbox(value=False, description="gradient checkpointing"),
        targets=w.ToggleButtons(options=["attention", "all-linear"], value="attention"),
    )


# ---- lesson 4: NF4 from scratch ------------------------------------------------------------------


def quantization_explorer(weights: dict):
    """Blocksize, code type (int4/FP4/NF4), double quantisation and the layer to inspect; shows RMSE, max
    error and bits per parameter of the round trip, and a histogram of the error.
    ``weights``: name -> 2-D float tensor (e.g. SmolLM2's projection weights)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    def show(layer, code_type, blocksize, double_quant):
        weight = weights[layer].float()
        state = nf4.quantize_4bit(weight, code_type, blocksize, double_quant)
        err = (nf4.dequantize_4bit(state).float() - weight).reshape(-1)
        bits = nf4.bits_per_parameter(blocksize, double_quant)
        fig, ax = plt.subplots(figsize=(6.5, 2.8), dpi=80)
        ax.hist(err.numpy(), bins=120, color="C0")
        ax.set_yscale("log")
        ax.set_xlabel("dequantised - original")
        ax.set_title(
            f"{layer} {tuple(weight.shape)}: {code_type}, blocksize {blocksize}"
            f"{', double quant' if double_quant else ''}",
            fontsize=9,
        )
        fig.tight_layout()
        plt.show()
        rel = float(err.square().mean().sqrt() / weight.std())
        print(
            f"RMSE {float(err.square().mean().sqrt()):.3e} ({rel:.1%} of the weights' std), "
            f"max |error| {float(err.abs().max()):.3e}, {bits:.4f} bits/parameter "
            f"(stored: {state.nbytes() * 8 / weight.numel():.4f})"
        )

    return w.interactive(
        show,
        layer=w.Dropdown(options=list(weights)),
        code_type=w.ToggleButtons(options=["int4", "fp4", "nf4"], value="nf4"),
        blocksize=w.Dropdown(options=list(nf4.BLOCKSIZES), value=64),
        double_quant=w.Checkbox(value=False, description="double quantisation"),
    )


# ---- lesson 6: the decision path -----------------------------------------------------------------


def decision_explorer():
    """The decision path of lesson 6 (``lora101.decision.decide``) with a control for every question it asks;
    prints the questions walked and the route. Memory comes from lesson 1's predictor."""
    import ipywidgets as w

    def show(
        n_params_b,
        gpu_memory_gb,
        batch_size,
        seq_len,
        gradient_checkpointing,
        prompting_good_enough,
        task_boundary_clear,
        base_is_strong,
        needs_new_knowledge,
        data_is_good,
        want_full_capacity,
        many_variants,
    ):
        d = decide(
            n_params=n_params_b * 1e9,
            gpu_memory_gb=gpu_memory_gb,
            batch_size=batch_size,
            seq_len=seq_len,
            gradient_checkpointing=gradient_checkpointing,
            prompting_good_enough=prompting_good_enough,
            task_boundary_clear=task_boundary_clear,
            base_is_strong=base_is_strong,
            needs_new_knowledge=needs_new_knowledge,
            data_is_good=data_is_good,
            want_full_capacity=want_full_capacity,
            many_variants=many_variants,
        )
        print(d.explain())

    return w.interactive(show, **_decision_controls())


def _decision_controls() -> dict:
    """One control for each question of :func:`decision_explorer`'s path, set to a 7B model on a 12 GB GPU."""
    import ipywidgets as w

    style = {"description_width": "initial"}
    return dict(
        n_params_b=w.FloatLogSlider(
            value=7, base=10, min=-1, max=2.5, step=0.05, description="base model (B params)", style=style
        ),
        gpu_memory_gb=w.Dropdown(
            options=[4, 8, 12, 16, 24, 40, 48, 80, 160, 640],
            value=12,
            description="GPU memory (GB)",
            style=style,
        ),
        batch_size=w.Dropdown(options=[1, 2, 4, 8, 16, 32], value=1, description="batch size", style=style),
        seq_len=w.Dropdown(
            options=[256, 512, 1024, 2048, 4096, 8192],
            value=2048,
            description="tokens per example",
            style=style,
        ),
        gradient_checkpointing=w.Checkbox(value=True, description="gradient checkpointing"),
        prompting_good_enough=w.Checkbox(value=False, description="prompting is good enough"),
        task_boundary_clear=w.Checkbox(value=True, description="the task boundary is clear"),
        base_is_strong=w.Checkbox(value=True, description="the base model is strong enough"),
        needs_new_knowledge=w.Checkbox(value=False, description="needs a large body of new knowledge"),
        data_is_good=w.Checkbox(value=True, description="the training data is good"),
        want_full_capacity=w.Checkbox(value=False, description="every weight must change"),
        many_variants=w.Checkbox(value=False, description="many variants of one base"),
    )
