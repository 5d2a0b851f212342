"""ipywidgets explorers the lessons use. Each function returns a widget; the computation lives in the package modules."""

from __future__ import annotations

# ---- lesson 1: the memory budget -----------------------------------------------------------------


def memory_budget_explorer(default_model: str = "Llama-2-7B"):
    """Sliders and menus for model size, rank, precision, optimizer, batch and sequence length; shows the
    full FT / LoRA / QLoRA budgets (``lora101.memory.estimate_memory``) as bars against common GPU sizes."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from lora101.memory import PRESETS, estimate_memory
    from lora101.plots import plot_memory_budget

    def show(model, r, precision, optimizer, batch_size, seq_len, gradient_checkpointing, targets):
        settings = dict(precision=precision, optimizer=optimizer, batch_size=batch_size, seq_len=seq_len,
                        gradient_checkpointing=gradient_checkpointing, r=r, target_modules=targets)  # fmt: skip
        budgets = {m: estimate_memory(model, m, **settings) for m in ("full", "lora", "qlora")}
        plot_memory_budget(budgets, title=f"{model}: r={r}, batch {batch_size} x {seq_len} tokens")
        plt.show()

    return w.interactive(
        show,
        model=w.Dropdown(options=list(PRESETS), value=default_model),
        r=w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128], value=8),
        precision=w.ToggleButtons(options=["bf16", "fp16", "fp32"], value="bf16"),
        optimizer=w.Dropdown(options=["adamw", "adamw-8bit", "sgd-momentum", "sgd"], value="adamw"),
        batch_size=w.IntSlider(value=1, min=1, max=32),
        seq_len=w.Dropdown(options=[128, 256, 512, 1024, 2048, 4096], value=512),
        gradient_checkpointing=w.Checkbox(value=False, description="gradient checkpointing"),
        targets=w.ToggleButtons(options=["attention", "all-linear"], value="attention"),
    )
