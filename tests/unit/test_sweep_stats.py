"""lora101.sweep_stats: a setting's spread over seeds, and verdicts only where the ranges do not overlap."""

from __future__ import annotations

import pytest

from lora101.sweep import table
from lora101.sweep_stats import Spread, by_setting, compare, spread


def _run(name, seed, test_loss, exact=0.5, trainable=100):
    result = {
        "parameters": {"trainable": trainable, "total": 1000},
        "train": {"last5_mean_loss": test_loss / 2, "tokens_per_s": 50.0, "losses": [1.0, test_loss]},
        "eval": {"test_loss": test_loss, "token_accuracy": 0.9, "exact_match": exact, "exact": 0, "n": 100},
        "peak_memory_bytes": 2**30 + seed,
    }
    return {"name": name, "seed": seed, "result": result}


def test_spread_is_the_mean_and_range_over_seeds():
    s = spread([_run("a", 0, 0.3), _run("a", 1, 0.1), _run("a", 2, 0.2)], "test_loss")
    assert s.values == (0.3, 0.1, 0.2) and s.mean == pytest.approx(0.2) and (s.low, s.high) == (0.1, 0.3)
    assert s.format() == "0.200 [0.100-0.300]" and Spread((0.25,)).format() == "0.250"
    with pytest.raises(ValueError, match="metric must be one of"):
        spread([_run("a", 0, 0.3)], "accuracy")


def test_a_verdict_only_where_the_ranges_do_not_overlap():
    a = [_run("a", s, v) for s, v in enumerate((0.10, 0.12, 0.11))]
    b = [_run("b", s, v) for s, v in enumerate((0.20, 0.15, 0.30))]
    c = [_run("c", s, v) for s, v in enumerate((0.11, 0.25, 0.05))]
    assert compare(a, b).better == "a" and "a is better" in compare(a, b).verdict  # lower loss is better
    assert compare(b, a).better == "a"
    assert compare(a, c).better is None and "no measurable difference" in compare(a, c).verdict
    assert compare(a[:1], b[:1]).better is None and "one seed" in compare(a[:1], b[:1]).verdict
    high = [_run("h", s, 0.1, exact=e) for s, e in enumerate((0.6, 0.7, 0.65))]
    low = [_run("l", s, 0.1, exact=e) for s, e in enumerate((0.2, 0.3, 0.25))]
    assert compare(low, high, "exact_match").better == "h"  # higher exact match is better
    assert str(compare(low, high, "exact_match")).startswith("exact_match: l 25.0% [20.0%-30.0%] vs h 65.0%")
    assert "peak_memory_bytes: l 1024 MiB [1024 MiB-1024 MiB] vs" in str(
        compare(low, high, "peak_memory_bytes")
    )


def test_table_gives_one_row_a_setting_with_its_seeds():
    runs = [_run(n, s, v) for s in range(3) for n, v in (("LoRA r=4", 0.2 + s / 100), ("LoRA r=16", 0.1))]
    assert list(by_setting(runs)) == ["LoRA r=4", "LoRA r=16"]
    lines = table(runs, timing=True).splitlines()
    assert len(lines) == 3 and "seeds" in lines[0] and "test loss [range]" in lines[0]
    assert lines[1].split()[:3] == ["LoRA", "r=4", "3"] and "0.210 [0.200-0.220]" in lines[1]
    assert "0.100 [0.100-0.100]" in lines[2] and "50%" in lines[2]
    single = table(runs[:2]).splitlines()  # one seed: one row a run, as before
    assert len(single) == 3 and "seeds" not in single[0]


def test_lesson_6_plots_draw_the_mean_the_range_and_each_seed():
    import matplotlib

    matplotlib.use("Agg")
    from lora101 import plots

    runs = []
    for seed in range(3):
        for rank, loss in ((1, 0.7), (16, 0.1)):
            run = _run(f"LoRA r={rank}", seed, loss + seed / 50, exact=0.2 * seed)
            runs.append({**run, "rank": rank})
    for draw in (
        plots.plot_rank_sweep,
        plots.plot_sweep_bars,
        plots.plot_training_losses,
        plots.plot_method_comparison,
    ):
        for chosen in (runs, runs[:2]):  # three seeds, and one
            fig = draw(chosen, title=draw.__name__)
            assert fig.axes and fig.axes[0].has_data(), draw.__name__
    bars = plots.plot_sweep_bars(runs).axes[0]
    dots = [line for line in bars.lines if line.get_linestyle() == "None" and len(line.get_xdata()) == 3]
    assert len(dots) == 4  # two settings x two scores, a dot per seed
    assert sorted(dots[0].get_xdata()) == pytest.approx([0.0, 0.2, 0.4])
    band = plots.plot_training_losses(runs).axes[0]
    assert len(band.collections) == 2  # one min-max band a setting
    matplotlib.pyplot.close("all")
