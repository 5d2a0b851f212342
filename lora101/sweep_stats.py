"""Repeated runs of a sweep, summarised: each setting's mean and spread over its seeds, and comparisons that
state a verdict only where the difference exceeds the spread.

A sweep (:mod:`lora101.sweep`) runs every setting once per seed; the seed draws the training examples,
their order and the adapters' initial matrices, while the held-out examples are the same for every run.
The spread of a setting is the range of its scores over the seeds (lowest to highest). Two settings are
called different only when their ranges do not overlap: the worst seed of one is better than the best
seed of the other. With three seeds each, two settings that do not differ at all still separate that
cleanly by chance one time in ten (2 of the 20 ways to split six scores into two groups of three), so
"differs" means "unlikely to be seed luck", not "proven"; overlapping ranges are reported as no
measurable difference. A setting with a single seed has no spread, so no verdict is stated for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Run = dict[str, Any]  # one run of a results file: the run's fields, its "seed" and its "result"


def _eval(name: str) -> Callable[[Run], float]:
    return lambda run: run["result"]["eval"][name]


def _train(name: str) -> Callable[[Run], float]:
    return lambda run: run["result"]["train"][name]


# metric -> (how to read it from a run, whether higher is better)
METRICS: dict[str, tuple[Callable[[Run], float], bool]] = {
    "test_loss": (_eval("test_loss"), False),
    "token_accuracy": (_eval("token_accuracy"), True),
    "exact_match": (_eval("exact_match"), True),
    "train_loss": (_train("last5_mean_loss"), False),
    "tokens_per_s": (_train("tokens_per_s"), True),
    "peak_memory_bytes": (lambda run: run["result"]["peak_memory_bytes"], False),
}
# how a metric's values are written (default: three decimals)
FORMATS: dict[str, Callable[[float], str]] = {
    "token_accuracy": "{:.1%}".format,
    "exact_match": "{:.1%}".format,
    "tokens_per_s": "{:.0f}".format,
    "peak_memory_bytes": lambda b: f"{b / 2**20:.0f} MiB",
}


@dataclass(frozen=True)
class Spread:
    """One metric of one setting over its seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def format(self, fmt: str | Callable[[float], str] = "{:.3f}") -> str:
        """``mean`` alone for one seed, ``mean [low-high]`` for several (``fmt``: a format string or a function)."""
        write = fmt.format if isinstance(fmt, str) else fmt
        if len(self.values) == 1:
            return write(self.mean)
        return f"{write(self.mean)} [{write(self.low)}-{write(self.high)}]"


def by_setting(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """The runs grouped by setting (the run's name), in the order the settings first appear."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)
    return groups


def spread(runs: Iterable[Run], metric: str) -> Spread:
    """``metric`` (a key of :data:`METRICS`) over ``runs``, the seeds of one setting."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    read = METRICS[metric][0]
    values = tuple(float(read(run)) for run in runs)
    if not values:
        raise ValueError(f"no runs to take {metric} of")
    return Spread(values)


@dataclass(frozen=True)
class Comparison:
    """Two settings compared on one metric; :attr:`verdict` is stated only where the ranges do not overlap."""

    metric: str
    names: tuple[str, str]
    spreads: tuple[Spread, Spread]

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    @property
    def better(self) -> str | None:
        """The name of the better setting, or None: one seed only, or ranges that overlap."""
        a, b = self.spreads
        if len(a.values) < 2 or len(b.values) < 2:
            return None
        if a.low > b.high:
            return self.names[0] if self.higher_is_better else self.names[1]
        if b.low > a.high:
            return self.names[1] if self.higher_is_better else self.names[0]
        return None

    @property
    def verdict(self) -> str:
        if min(len(s.values) for s in self.spreads) < 2:
            return "one seed: no spread to compare with"
        if self.better is None:
            return "no measurable difference (the ranges over seeds overlap)"
        return f"{self.better} is better (the ranges over seeds do not overlap)"

    def __str__(self) -> str:
        fmt = FORMATS.get(self.metric, "{:.3f}".format)
        (a, b), (sa, sb) = self.names, self.spreads
        return f"{self.metric}: {a} {sa.format(fmt)} vs {b} {sb.format(fmt)}: {self.verdict}"


def compare(a: Iterable[Run], b: Iterable[Run], metric: str = "test_loss") -> Comparison:
    """Compare two settings (each a list of runs, one per seed) on ``metric``."""
    a, b = list(a), list(b)
    if not a or not b:
        raise ValueError("compare needs at least one run of each setting")
    return Comparison(metric, (a[0]["name"], b[0]["name"]), (spread(a, metric), spread(b, metric)))
