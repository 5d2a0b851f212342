"""Concept diagrams of the course, drawn by code: each function returns a matplotlib Figure (never shows it).

* :func:`lora_bypass` -- a LoRA layer: the frozen weight W beside the trained low-rank path B A, scaled by
  alpha/r and summed (lesson 2, reused in lesson 3);
* :func:`qlora_dataflow` -- a QLoRA layer: 4-bit NF4 storage de-quantised to the compute dtype for the
  matmul, plus the adapter path (fp32 in this course); gradients reach only A and B (lessons 4-5);
* :func:`memory_breakdown` -- stacked bars of training memory for full fine-tuning, LoRA and QLoRA, computed
  by :func:`lora101.memory.estimate_memory` for a model (lesson 1): a measurement of the formula, not a
  drawing of made-up sizes.

Show a figure in a notebook with ``lora101.plots.display_figure(fig)``.
"""

from __future__ import annotations

from lora101.memory import estimate_memory

__all__ = ["lora_bypass", "qlora_dataflow", "memory_breakdown", "FROZEN_COLOR", "TRAINED_COLOR"]

FROZEN_COLOR = "#c9d6e8"  # blue-grey: weights that get no gradient
TRAINED_COLOR = "#f6c28b"  # orange: weights the optimizer updates
NEUTRAL_COLOR = "#eeeeee"
GRAD_COLOR = "#c44e52"


def _box(ax, x, y, w, h, text, color, *, fontsize=10, bold=False, dashed=False):
    """A rounded box centred at (x, y) with ``text`` in it; returns the patch."""
    from matplotlib.patches import FancyBboxPatch

    patch = FancyBboxPatch(
        (x - w / 2, y - h / 2),
        w,
        h,
        boxstyle="round,pad=0.02,rounding_size=0.08",
        facecolor=color,
        edgecolor="#333333",
        lw=1.2,
        ls="--" if dashed else "-",
    )
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, fontweight="bold" if bold else "normal")
    return patch


def _arrow(ax, start, end, *, color="#333333", dashed=False, text=None, text_offset=(0.0, 0.12), rad=0.0):
    """An arrow from ``start`` to ``end`` (data coordinates), optionally labelled at its midpoint."""
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={
            "arrowstyle": "-|>",
            "color": color,
            "lw": 1.4,
            "ls": "--" if dashed else "-",
            "shrinkA": 2,
            "shrinkB": 2,
            "connectionstyle": f"arc3,rad={rad}",
        },
    )
    if text:
        mx, my = (start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mx, my, text, ha="center", va="center", fontsize=8, color=color)


def _canvas(width, height, figsize):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=80)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _legend(ax, entries, loc="lower left"):
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=color, edgecolor="#333333", label=label) for label, color in entries]
    ax.legend(handles=handles, loc=loc, fontsize=8, frameon=False)


def lora_bypass(r: int = 8, alpha: float = 16, d: int | None = None, k: int | None = None):
    """A LoRA layer as a diagram: ``h = W x + (alpha/r) B A x``.

    The input ``x`` (k features) goes through the frozen weight ``W`` (d x k) and, in parallel, through
    ``A`` (r x k, down to r numbers) and ``B`` (d x r, back up to d), scaled by ``alpha/r``; the two are
    summed. ``r``, ``alpha``: the rank and scale written on the diagram (alpha/r is computed); ``d``, ``k``:
    optional sizes to print instead of the letters (e.g. 576 for SmolLM2's q_proj).
    """
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    for name, value in (("d", d), ("k", k)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    from matplotlib.patches import Circle

    ds, ks = (str(d) if d else "d"), (str(k) if k else "k")
    scale = alpha / r

    fig, ax = _canvas(12, 6.4, (9, 4.8))
    _box(ax, 1.0, 3.2, 1.3, 0.9, f"input x\n({ks})", NEUTRAL_COLOR)
    _box(ax, 5.5, 5.0, 3.0, 1.2, f"W  ({ds} x {ks})\nfrozen: no gradient", FROZEN_COLOR, bold=True)
    _box(ax, 3.9, 1.5, 2.1, 1.2, f"A  ({r} x {ks})\ntrained\nstarts random", TRAINED_COLOR)
    _box(ax, 6.9, 1.5, 2.1, 1.2, f"B  ({ds} x {r})\ntrained\nstarts at zero", TRAINED_COLOR)
    ax.add_patch(Circle((9.4, 3.2), 0.32, facecolor="white", edgecolor="#333333", lw=1.4))
    ax.text(9.4, 3.2, "+", ha="center", va="center", fontsize=16)
    _box(ax, 10.9, 3.2, 1.7, 1.3, f"output h\n({ds})", NEUTRAL_COLOR)

    _arrow(ax, (1.65, 3.45), (4.0, 5.0), text="W x", text_offset=(-0.35, 0.2))
    _arrow(ax, (1.65, 2.95), (2.85, 1.6))
    _arrow(ax, (4.95, 1.5), (5.85, 1.5), text=f"A x ({r})", text_offset=(0, 0.25))
    _arrow(
        ax, (7.95, 1.6), (9.15, 3.0), text=f"x alpha/r\n= {alpha:g}/{r} = {scale:g}", text_offset=(0.75, -0.1)
    )
    _arrow(ax, (7.0, 5.0), (9.15, 3.4))
    _arrow(ax, (9.72, 3.2), (10.05, 3.2))

    ax.text(6.0, 6.25, "h = W x + (alpha/r) B A x", ha="center", va="center", fontsize=13, fontweight="bold")
    ax.text(
        5.4,
        0.35,
        f"trainable: r (d + k) = {r}({ds} + {ks}) numbers instead of d k = {ds} x {ks}",
        ha="center",
        va="center",
        fontsize=9,
    )
    _legend(ax, [("frozen (no gradient)", FROZEN_COLOR), ("trained", TRAINED_COLOR)], loc="upper left")
    fig.tight_layout()
    return fig


def qlora_dataflow(compute_dtype: str = "bf16", adapter_dtype: str = "fp32"):
    """A QLoRA layer as a diagram: what is stored, what is computed, where gradients go.

    Storage holds the 4-bit NF4 codes of W and their absmax constants (one per block of 64 weights, themselves
    quantised to 8 bits: double quantisation). At each forward pass the block is de-quantised to
    ``compute_dtype`` ("bf16", "fp16" or "fp32") for the matmul; the LoRA adapter path, whose A and B are
    stored in ``adapter_dtype`` (fp32 in this course: PEFT keeps adapter weights in fp32 by default even
    when the base computes in bf16), is added. The backward pass flows through the de-quantised W to the
    input, but only A and B receive gradients.
    """
    for name, value in (("compute_dtype", compute_dtype), ("adapter_dtype", adapter_dtype)):
        if value not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"{name} must be 'bf16', 'fp16' or 'fp32', got {value!r}")
    fig, ax = _canvas(13, 7.2, (10, 5.5))
    _qlora_boxes(ax, compute_dtype, adapter_dtype)
    _qlora_arrows(ax, compute_dtype)
    _legend(
        ax,
        [
            ("frozen (no gradient)", FROZEN_COLOR),
            ("trained", TRAINED_COLOR),
            ("computed on the fly", NEUTRAL_COLOR),
        ],
        loc="upper right",
    )
    fig.tight_layout()
    return fig


def _qlora_boxes(ax, compute_dtype: str, adapter_dtype: str) -> None:
    """The QLoRA diagram's boxes: storage, the de-quantise/matmul path, the adapter, the sum."""
    from matplotlib.patches import Circle, FancyBboxPatch

    # Storage: what sits in GPU memory between steps.
    ax.add_patch(
        FancyBboxPatch(
            (0.2, 3.6),
            4.0,
            3.2,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor="none",
            edgecolor="#777777",
            ls=":",
            lw=1.2,
        )
    )
    ax.text(2.2, 6.55, "storage (frozen, no gradient)", ha="center", va="center", fontsize=9, color="#555555")
    _box(ax, 2.2, 5.6, 3.4, 1.0, "NF4 codes of W\n4 bits per weight", FROZEN_COLOR, bold=True)
    _box(
        ax,
        2.2,
        4.3,
        3.4,
        1.0,
        "absmax constants, 1 per 64 weights\n(double-quantised to 8 bits)",
        FROZEN_COLOR,
        fontsize=8,
    )
    _box(
        ax,
        6.3,
        4.95,
        2.6,
        1.1,
        f"de-quantise\nto {compute_dtype}\n(every forward pass)",
        NEUTRAL_COLOR,
        fontsize=9,
    )
    _box(ax, 9.2, 4.95, 2.0, 1.1, f"matmul\nW x  ({compute_dtype})", NEUTRAL_COLOR)
    _box(ax, 1.2, 2.2, 1.3, 0.9, f"input x\n({compute_dtype})", NEUTRAL_COLOR)
    _box(ax, 4.4, 1.3, 2.3, 1.1, f"LoRA A (r x k)\n{adapter_dtype}, trained", TRAINED_COLOR)
    _box(ax, 7.6, 1.3, 2.3, 1.1, f"LoRA B (d x r)\n{adapter_dtype}, trained", TRAINED_COLOR)
    ax.add_patch(Circle((11.0, 3.1), 0.32, facecolor="white", edgecolor="#333333", lw=1.4))
    ax.text(11.0, 3.1, "+", ha="center", va="center", fontsize=16)
    _box(ax, 12.3, 3.1, 1.2, 1.0, "output\nh", NEUTRAL_COLOR)


def _qlora_arrows(ax, compute_dtype: str) -> None:
    """The QLoRA diagram's arrows (forward solid, backward dashed) and its captions."""
    _arrow(ax, (3.9, 5.5), (5.0, 5.1))
    _arrow(ax, (3.9, 4.4), (5.0, 4.8))
    _arrow(ax, (7.6, 4.95), (8.2, 4.95), text=f"W in {compute_dtype}", text_offset=(0, 0.7))
    _arrow(ax, (1.85, 2.5), (8.3, 4.45), rad=-0.1)
    _arrow(ax, (1.85, 1.95), (3.25, 1.4))
    _arrow(ax, (5.55, 1.3), (6.45, 1.3))
    _arrow(ax, (8.75, 1.4), (10.75, 2.9), text="x alpha/r", text_offset=(0.55, -0.15))
    _arrow(ax, (10.2, 4.7), (10.8, 3.4))
    _arrow(ax, (11.32, 3.1), (11.7, 3.1))
    # Backward: gradients reach A and B only.
    _arrow(ax, (10.8, 2.75), (7.9, 0.75), color=GRAD_COLOR, dashed=True, rad=-0.25)
    _arrow(
        ax,
        (7.3, 0.7),
        (4.7, 0.7),
        color=GRAD_COLOR,
        dashed=True,
        rad=-0.2,
        text="gradients flow only into A and B",
        text_offset=(0, -0.55),
    )
    ax.text(
        5.0,
        3.35,
        "no gradient for W: the 4-bit codes never change",
        ha="center",
        va="center",
        fontsize=8,
        color=GRAD_COLOR,
    )
    ax.text(
        6.5,
        7.0,
        "QLoRA: h = dequant(NF4 W) x + (alpha/r) B A x",
        ha="center",
        va="center",
        fontsize=12,
        fontweight="bold",
    )


# The parts memory_breakdown draws, in stacking order: MemoryBudget attribute -> legend label.
_PARTS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "master_weights": "fp32 master weights",
    "activations": "activations",
}
_PART_COLORS = {
    "weights": "#4c72b0",
    "gradients": "#dd8452",
    "optimizer": "#c44e52",
    "master_weights": "#8172b3",
    "activations": "#55a868",
}


def memory_breakdown(
    model="Llama-2-7B", *, r: int = 8, batch_size: int = 1, seq_len: int = 512, unit="GB", **estimate_kwargs
):
    """Stacked bars of training memory for full fine-tuning, LoRA and QLoRA on ``model``.

    Every number comes from :func:`lora101.memory.estimate_memory` (``model``: a preset name such as
    "Llama-2-7B", a ModelShape, config or parameter count; ``r``, ``batch_size``, ``seq_len`` and any other
    keyword, e.g. ``optimizer``, ``precision``, ``target_modules``, ``gradient_checkpointing``, are passed
    on). ``unit``: "GB" (1e9 bytes) or "MB" (1e6). The Figure's ``budgets`` attribute holds the three
    MemoryBudgets drawn, so the numbers on the bars can be checked against them.
    """
    import matplotlib.pyplot as plt

    scale = {"GB": 1e9, "MB": 1e6}.get(unit)
    if scale is None:
        raise ValueError(f"unit must be 'GB' or 'MB', got {unit!r}")
    budgets = {
        label: estimate_memory(model, method, r=r, batch_size=batch_size, seq_len=seq_len, **estimate_kwargs)
        for label, method in (("full FT", "full"), ("LoRA", "lora"), ("QLoRA", "qlora"))
    }
    name = getattr(model, "name", model) if not isinstance(model, (int, float)) else f"{model:.3g} parameters"
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=80)
    labels = list(budgets)
    bottom = [0.0] * len(labels)
    for part, legend in _PARTS.items():
        values = [getattr(budgets[k], part) / scale for k in labels]
        if part == "master_weights" and not any(values):
            continue  # only drawn when asked for (master_weights=True)
        ax.bar(labels, values, bottom=bottom, color=_PART_COLORS[part], label=legend, width=0.6)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.3g} {unit}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(bottom) * 1.15)
    ax.set_ylabel(f"{unit} (1e{9 if unit == 'GB' else 6} bytes)")
    ax.set_title(f"training memory of {name}: r = {r}, batch {batch_size} x {seq_len} tokens", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.budgets = budgets
    return fig
