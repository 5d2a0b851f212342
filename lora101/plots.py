"""Matplotlib figures the lessons draw. Each function takes data, returns the Figure, and never calls plt.show()."""

from __future__ import annotations

# ---- lessons 1-3 (memory budget, LoRA layer, LoRA on a model) ----------------------------------


def plot_memory_budget(budgets: dict, gpus: dict[str, float] | None = None, title: str = "", ax=None):
    """Stacked bars of training memory (GB) per method, with dashed lines at common GPU sizes.

    ``budgets``: label -> ``lora101.memory.MemoryBudget``. ``gpus``: name -> GB (default
    ``lora101.memory.GPU_SIZES_GB``). Returns the Figure.
    """
    import matplotlib.pyplot as plt

    from lora101.memory import GPU_SIZES_GB

    gpus = GPU_SIZES_GB if gpus is None else gpus
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4), dpi=80)
    labels = list(budgets)
    parts = list(next(iter(budgets.values())).parts_gb()) if budgets else []
    colors = ["#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#55a868"]
    bottom = [0.0] * len(labels)
    for part, color in zip(parts, colors, strict=False):
        values = [budgets[k].parts_gb()[part] for k in labels]
        ax.bar(labels, values, bottom=bottom, color=color, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.3g} GB", ha="center", va="bottom", fontsize=9)
    top = max(bottom + [1.0])
    for name, size in sorted(gpus.items(), key=lambda kv: kv[1]):
        if size <= 1.6 * top:
            ax.axhline(size, color="grey", ls="--", lw=0.8)
            ax.text(len(labels) - 0.5, size, f" {name}", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_ylabel("GB (1e9 bytes)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_lora_params_vs_rank(d_in: int, d_out: int, ranks, ax=None):
    """Trainable parameters of one (d_out x d_in) layer: full ``d_out*d_in`` vs LoRA's ``r*(d_in+d_out)``."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5), dpi=80)
    ranks = list(ranks)
    ax.plot(ranks, [r * (d_in + d_out) for r in ranks], "o-", label="LoRA: r (d_in + d_out)")
    ax.axhline(d_in * d_out, color="C3", ls="--", label=f"full: d_out d_in = {d_in * d_out:,}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rank r")
    ax.set_ylabel("trainable parameters")
    ax.set_title(f"one {d_out} x {d_in} layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_loss_curves(curves: dict[str, list[float]], xlabel: str = "step", title: str = "", ax=None):
    """One line per label: a training (or evaluation) loss against the step."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5), dpi=80)
    for label, values in curves.items():
        ax.plot(range(len(values)), values, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
