"""The one description of a fine-tuning run: :class:`FinetuneConfig`, validated field by field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lora101.errors import ConfigError
from lora101.models import DEFAULT_MODEL, choose_device, resolve_model
from lora101.targets import parse_targets
from lora101.tasks import DEFAULT_TASK, task_names

MIXED_PRECISIONS = ("auto", "bf16", "no")
PRECISIONS = ("nf4", "bf16", "fp32")
POSITIVE = ("rank", "alpha", "steps", "batch_size", "save_steps", "logging_steps")
POSITIVE += ("train_size", "eval_size", "max_length", "max_new_tokens")
# What may differ between a run and its resumption: where it runs, not what it computes.
RESUMABLE_CHANGES = ("device",)


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run depends on; plain values with defaults that work on a laptop CPU.

    The data: a built-in ``task`` (:mod:`lora101.tasks`; ``train_size`` examples of its train split and
    ``eval_size`` of its test split), or your JSONL file ``data`` (``eval_fraction`` of it held out, or
    ``eval_data``). ``save_steps=None`` checkpoints every tenth of the steps, so an interruption loses at
    most a tenth of the run. An invalid value raises :class:`lora101.errors.ConfigError` naming its field.
    """

    model: str = DEFAULT_MODEL
    precision: str = "nf4"  # "nf4" (QLoRA) or "bf16"/"fp32" (plain LoRA on a full-precision base)
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: str | list[str] = "all-linear"
    steps: int = 50  # lesson 5's CPU budget (a GPU's full-size job takes 400)
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 10
    seed: int = 0
    save_steps: int | None = None  # None: every tenth of the steps
    logging_steps: int = 5
    max_grad_norm: float = 1.0
    device: str | None = None
    # "auto": bf16 autocast where the GPU has native bf16 (compute capability 8.0+), none elsewhere;
    # "bf16" forces it (a CPU runs it too: how the tests take the GPU's code path), "no" turns it off.
    mixed_precision: str = "auto"
    task: str | None = DEFAULT_TASK  # used when ``data`` is None
    data: str | None = None  # JSONL of prompt/response pairs or chat messages
    eval_data: str | None = None
    eval_fraction: float = 0.1
    train_size: int = 1200
    eval_size: int = 60
    max_length: int = 512
    max_new_tokens: int = 72

    def __post_init__(self) -> None:
        if self.save_steps is None:
            self.save_steps = max(1, self.steps // 10) if _positive_int(self.steps) else 1
        for name in ("data", "eval_data"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        self._check_numbers()
        self._check_choices()

    def _check_numbers(self) -> None:
        for name in POSITIVE:
            if not _positive_int(getattr(self, name)):
                raise ConfigError(name, f"must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be an integer >= 0, got {self.warmup_steps!r}")
        if not (0 < self.lr < 1):
            raise ConfigError("lr", f"must be between 0 and 1, got {self.lr!r}")
        if not (0 <= self.dropout < 1):
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not (0 < self.eval_fraction < 1):
            raise ConfigError("eval_fraction", f"must be between 0 and 1, got {self.eval_fraction!r}")

    def _check_choices(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(
                "mixed_precision", f"must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}"
            )
        for name, check in (("targets", _targets), ("device", _device), ("model", _model)):
            try:
                check(getattr(self, name))
            except ValueError as err:
                raise ConfigError(name, _reason(err)) from None
        if self.data is None and self.task not in task_names():
            raise ConfigError("task", f"{self.task!r} is not one of the built-in tasks {task_names()}")
        if self.data is None and self.eval_data is not None:
            raise ConfigError("eval_data", "needs data (a built-in task has its own held-out test set)")

    @classmethod
    def for_steps(cls, steps: int, **settings: Any) -> FinetuneConfig:
        """A config whose schedule follows ``steps`` (what ``lora101 finetune`` runs): a warm-up of a tenth
        of the steps, the loss logged every quarter of them (at most every 5 steps, for a readable curve),
        and a checkpoint every tenth of them unless ``save_steps`` says otherwise (no later than ``steps``)."""
        if not _positive_int(steps):
            raise ConfigError("steps", f"must be a positive integer, got {steps!r}")
        save_steps = settings.pop("save_steps", None)
        return cls(
            steps=steps,
            save_steps=None if save_steps is None else min(save_steps, steps),
            warmup_steps=max(1, steps // 10),
            logging_steps=max(1, min(5, steps // 4)),
            **settings,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """The fields whose values differ from ``other`` (a :meth:`to_dict` read back), as 'name: a -> b'."""
        mine = self.to_dict()
        names = [f.name for f in fields(self) if f.name not in RESUMABLE_CHANGES]
        return [f"{n}: {other.get(n)!r} -> {mine[n]!r}" for n in names if _differs(other.get(n), mine[n])]


def _differs(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` differ (lists and tuples alike, as JSON gives them back)."""
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) != norm(b)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _targets(spec) -> None:
    parse_targets(spec, "targets")


def _device(device) -> None:
    if device is not None:
        choose_device(device)


def _model(name) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{name!r} is not a model name")
    if Path(name).expanduser().is_absolute() and not Path(name).expanduser().exists():
        raise ValueError(
            f"{name} does not exist; give a bundled name, a folder holding config.json, or a hub id"
        )
    resolve_model(name, prepare=False)


def _reason(err: ValueError) -> str:
    """What is wrong, without the ``name:`` the checking function put first (its own parameter's name)."""
    text = str(err)
    head, sep, rest = text.partition(": ")
    return rest if sep and " " not in head else text
