"""Matplotlib figures the lessons draw. Each function takes data, returns the Figure, and never calls plt.show()."""

from __future__ import annotations

import io

import numpy as np

from lora101.memory import GPU_SIZES_GB
from lora101.sweep_stats import by_setting, spread

# ---- lessons 1-3 (memory budget, LoRA layer, LoRA on a model) ----------------------------------


def plot_memory_budget(budgets: dict, gpus: dict[str, float] | None = None, title: str = "", ax=None):
    """Stacked bars of training memory (GB) per method, with dashed lines at common GPU sizes.

    ``budgets``: label -> ``lora101.memory.MemoryBudget``. ``gpus``: name -> GB (default
    ``lora101.memory.GPU_SIZES_GB``). Returns the Figure.
    """
    import matplotlib.pyplot as plt

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


def loss_curve(steps, losses, total_steps: int | None = None, title: str = "training loss", ax=None):
    """The fine-tune's training loss against the optimizer step (lesson 5, ``lora101 finetune``).

    ``steps`` and ``losses`` are equal-length sequences; ``total_steps`` fixes the x range so that a
    live plot does not rescale as it grows.
    """
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.2), dpi=80)
    ax.plot(list(steps), list(losses), marker="o", markersize=3)
    if total_steps:
        ax.set_xlim(0, total_steps)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- lesson 4: NF4 from scratch ------------------------------------------------------------------


def plot_codebook_over_histogram(scaled, codes: dict, title: str = "", ax=None):
    """Histogram of block-scaled weights (each divided by its block's absmax, so in [-1, 1]) with the code
    values of each codebook drawn as ticks below it. ``scaled``: 1-D tensor/array; ``codes``: label -> (16,)."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 3.8), dpi=80)
    values = np.asarray(scaled, dtype=np.float64).reshape(-1)
    ax.hist(values, bins=200, range=(-1, 1), density=True, color="#bbbbbb", label="scaled weights")
    top = ax.get_ylim()[1]
    for i, (label, code) in enumerate(codes.items()):
        y = -top * (0.08 + 0.08 * i)
        vals = np.unique(np.asarray(code, dtype=np.float64))
        ax.plot(
            vals,
            np.full(vals.shape, y),
            "|",
            ms=14,
            mew=2,
            color=f"C{i}",
            label=f"{label} ({vals.size} values)",
        )
    ax.set_ylim(-top * (0.12 + 0.08 * len(codes)), top)
    ax.set_xlabel("weight / block absmax")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_error_by_layer_type(errors: dict, metric: str = "RMSE", title: str = "", ax=None):
    """Grouped bars: ``errors[layer_type][code_type]`` -> a number (e.g. RMSE relative to the weights' std)."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 3.5), dpi=80)
    layer_types = list(errors)
    code_types = list(next(iter(errors.values())))
    x = np.arange(len(layer_types))
    width = 0.8 / len(code_types)
    for i, code in enumerate(code_types):
        ax.bar(
            x + (i - (len(code_types) - 1) / 2) * width,
            [errors[t][code] for t in layer_types],
            width,
            label=code,
        )
    ax.set_xticks(x, layer_types)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_code_usage(counts: dict, title: str = "", ax=None):
    """How often each of the 16 codes is used, one panel per code type; ``counts``: label -> ((16,), entropy)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, len(counts), figsize=(3.2 * len(counts), 2.8), dpi=80, sharey=True)
    else:
        fig, axes = ax.figure, [ax]
    axes = np.atleast_1d(axes)
    for a, (label, (c, entropy)) in zip(axes, counts.items(), strict=True):
        c = np.asarray(c, dtype=np.float64)
        a.bar(range(16), c / c.sum(), color="C0")
        a.axhline(1 / 16, color="C3", ls="--", lw=1)
        a.set_title(f"{label}: {entropy:.3f} bits", fontsize=10)
        a.set_xlabel("code (sorted by value)")
    axes[0].set_ylabel("fraction of weights")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_image(fig, dpi: int = 80):
    """``fig`` as an IPython PNG ``Image``, and ``fig`` closed: the same output whatever matplotlib backend
    the kernel runs (inline or Agg), and never drawn a second time by the inline backend."""

    import matplotlib.pyplot as plt
    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return Image(buffer.getvalue())


def display_figure(fig, dpi: int = 80) -> None:
    """Show ``fig`` as one PNG and close it (see :func:`figure_image`)."""
    from IPython.display import display

    display(figure_image(fig, dpi))


# ---- lesson 6: tradeoffs, measured (runs are entries of a lora101.sweep results file) -------------
# Runs of one setting at several seeds are drawn as one mark at their mean, with a bar over their range
# (lowest to highest) and a dot for each seed; a setting with one seed is a plain mark.


def _spreads(runs, metric: str):
    """(setting names, their Spreads of ``metric``) for ``runs`` grouped by setting (lora101.sweep_stats)."""

    settings = by_setting(runs)
    return list(settings), [spread(group, metric) for group in settings.values()]


def _range_bars(spreads) -> list[list[float]]:
    """Matplotlib's ``xerr``/``yerr``: the distance from each mean down to the lowest and up to the highest."""
    return [[s.mean - s.low for s in spreads], [s.high - s.mean for s in spreads]]


def _seed_dots(ax, positions, spreads, horizontal: bool = False, **style) -> None:
    """A small dot for each seed's value, where a setting has more than one."""
    for position, s in zip(positions, spreads, strict=True):
        if len(s.values) > 1:
            xy = (s.values, [position] * len(s.values))
            ax.plot(*(xy if horizontal else xy[::-1]), ".", color="black", alpha=0.5, ms=4, **style)


def plot_rank_sweep(runs, title: str = "", ax=None):
    """Held-out exact match and token accuracy (left axis) and trainable parameters (right, log) against rank.

    ``runs``: results-file runs of one rank sweep (``lora101.sweep.runs_in(doc, "rank")``), one or more seeds.
    """
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["rank"])
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.6), dpi=80)
    ranks = [group[0]["rank"] for group in by_setting(runs).values()]
    for metric, style, color, label in (
        ("exact_match", "o-", "C0", "exact match"),
        ("token_accuracy", "s--", "C2", "token accuracy"),
    ):
        spreads = _spreads(runs, metric)[1]
        means = [s.mean for s in spreads]
        ax.errorbar(ranks, means, yerr=_range_bars(spreads), fmt=style, color=color, capsize=3, label=label)
        _seed_dots(ax, ranks, spreads)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("rank r (alpha = 2r, all linear layers)")
    ax.set_ylabel("held-out score (mean, range over seeds)")
    right = ax.twinx()
    trainable = [group[0]["result"]["parameters"]["trainable"] for group in by_setting(runs).values()]
    right.plot(ranks, trainable, "^:", color="C3", label="trainable parameters")
    right.set_yscale("log")
    right.set_ylabel("trainable parameters", color="C3")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_sweep_bars(runs, title: str = "", ax=None):
    """Horizontal bars per setting: held-out exact match and token accuracy side by side (labels: run names);
    with several seeds, each bar is the mean, with the range over the seeds and a dot per seed."""
    import matplotlib.pyplot as plt

    names, exact = _spreads(runs, "exact_match")
    tokens = _spreads(runs, "token_accuracy")[1]
    fig, ax = (
        (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 0.45 * len(names) + 1.2), dpi=80)
    )
    y = np.arange(len(names))
    for offset, spreads, color, label in (
        (-0.2, exact, "C0", "exact match"),
        (0.2, tokens, "C2", "token accuracy"),
    ):
        means = [s.mean for s in spreads]
        ax.barh(y + offset, means, 0.4, color=color, label=label, xerr=_range_bars(spreads), capsize=2)
        _seed_dots(ax, y + offset, spreads, horizontal=True)
        for i, s in enumerate(spreads):
            ax.text(s.high + 0.01, i + offset, f"{s.mean:.0%}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("held-out score")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_training_losses(runs, title: str = "", ax=None):
    """The training loss of each setting against the optimizer step (log scale: a diverging run stands out);
    with several seeds, the mean curve and a band from the lowest to the highest seed at each step."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.4), dpi=80)
    for i, (name, group) in enumerate(by_setting(runs).items()):
        curves = [(r["result"].get("train") or {}).get("losses") or [] for r in group]
        steps = min(len(c) for c in curves)
        if not steps:
            continue
        losses = np.array([c[:steps] for c in curves])
        x = range(1, steps + 1)
        ax.plot(x, losses.mean(axis=0), color=f"C{i}", label=name)
        if len(curves) > 1:
            ax.fill_between(x, losses.min(axis=0), losses.max(axis=0), color=f"C{i}", alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_method_comparison(runs, title: str = ""):
    """One bar per setting (full FT, LoRA, QLoRA...) in four panels: peak memory (MiB), training tokens/s,
    held-out test loss and exact match; with several seeds, the mean with the range and a dot per seed."""
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r["result"].get("train")]
    names = _spreads(runs, "test_loss")[0]
    panels = [
        ("peak memory (MiB)", "peak_memory_bytes", 2**-20, "{:.0f}", None),
        ("training tokens/s", "tokens_per_s", 1, "{:.0f}", None),
        ("held-out test loss", "test_loss", 1, "{:.3f}", None),
        ("held-out exact match", "exact_match", 1, "{:.0%}", 1.0),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 0.45 * len(names) + 1.4), dpi=80, sharey=True)
    for ax, (label, metric, unit, fmt, top) in zip(axes, panels, strict=True):
        spreads = _spreads(runs, metric)[1]
        spreads = [type(s)(tuple(v * unit for v in s.values)) for s in spreads]
        y = range(len(names))
        ax.barh(
            y, [s.mean for s in spreads], color=[f"C{i}" for i in y], xerr=_range_bars(spreads), capsize=2
        )
        _seed_dots(ax, y, spreads, horizontal=True)
        for i, s in enumerate(spreads):
            ax.text(s.high, i, " " + fmt.format(s.mean), va="center", fontsize=8)
        ax.set_xlim(0, (top or max([s.high for s in spreads] + [1e-9])) * 1.35)
        ax.set_title(label, fontsize=10)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_memory_at_scale(runs, title: str = "", ax=None):
    """``lora101 bench scale``'s runs: per method, lesson 1's prediction beside the measured peak, and the
    measured peak less what the process held before the model was built (Python, PyTorch, libraries: a cost
    the prediction leaves out), in GiB."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2), dpi=80)
    x = np.arange(len(runs))
    bars = [
        ("lesson 1's prediction", [r["predicted_bytes"] for r in runs], "C0"),
        ("measured peak less the process", [r["peak_bytes"] - r.get("process_bytes", 0) for r in runs], "C1"),
        ("measured peak", [r["peak_bytes"] for r in runs], "C3"),
    ]
    for i, (label, values, color) in enumerate(bars):
        gib = [v / 2**30 for v in values]
        ax.bar(x + (i - 1) * 0.27, gib, 0.27, label=label, color=color)
        for j, v in enumerate(gib):
            ax.text(j + (i - 1) * 0.27, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["method"] for r in runs])
    ax.set_ylabel("GiB")
    ax.set_ylim(0, max(r["peak_bytes"] for r in runs) / 2**30 * 1.2)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
