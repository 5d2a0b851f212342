"""A decision path as a function: prompting, LoRA, QLoRA, full fine-tuning, or something else first.

The path gathers common practical advice (the LoRA paper, Hu et al. 2021; the QLoRA paper, Dettmers et
al. 2023; Thinking Machines' "LoRA Without Regret", Schulman et al. 2025) into questions asked in order,
with lesson 6's measurements beside them:

1. Is prompting good enough? Then stop: no training at all.
2. Is the task boundary clear? If not, clarify it before fine-tuning anything.
3. Is the base model strong enough for the task? If not, change the base: an adapter only adapts
   (lesson 6: LoRA on a freshly initialised SmolLM2 learnt nothing the pretrained one did).
4. Does the task need a large body of new knowledge? Then retrieval, not an adapter.
5. Is the data good? If not, fix the data first (lesson 6: wrong answers in the training set).
6. Memory, predicted by lesson 1's predictor, :func:`lora101.memory.estimate_memory`, with the settings
   of lesson 1's model-size table (:data:`TRAINING`: bf16 storage, AdamW, fp32 master weights for full
   fine-tuning, LoRA r=16 on all linear layers) and the situation's batch size, sequence length and
   gradient checkpointing. Full fine-tuning when the task wants every weight to change, or when the
   model is small (a common rule of thumb: under 1B parameters) and only one variant is needed; else
   LoRA if the 16-bit base fits, QLoRA if only the 4-bit base fits, and a smaller model if neither does.

The predictor does not count the CUDA context and the allocator's slack (0.5-1 GB on a GPU), so a fit
with less than :data:`TIGHT_GB` to spare is reported as tight.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lora101.memory import GB, PRESETS, MemoryBudget, estimate_memory

# Lesson 1's model-size table: what training the path assumes, besides the situation's batch and length.
TRAINING = dict(precision="bf16", optimizer="adamw", r=16, target_modules="all-linear")
SMALL_MODEL = 1e9  # a common rule of thumb: under 1B parameters full fine-tuning is often the simpler choice
TIGHT_GB = 1.0  # what a GPU needs beyond the predicted tensors: CUDA context, allocator slack

ROUTES: dict[str, str] = {
    "prompting": "no fine-tuning: prompting already does the job",
    "clarify": "clarify the task boundary before fine-tuning anything",
    "better_base": "choose a stronger base model: an adapter adapts, it does not create the ability",
    "retrieval": "use retrieval (or a bigger model) for the knowledge; fine-tune only the behaviour",
    "fix_data": "fix the training data first: an adapter learns the errors as faithfully as the rest",
    "full": "full fine-tuning",
    "lora": "LoRA on the 16-bit base",
    "qlora": "QLoRA: LoRA on the 4-bit NF4 base",
    "smaller_model": "a smaller base model (or shorter sequences, or gradient checkpointing): nothing fits",
}


@dataclass(frozen=True)
class Situation:
    """What the path asks about.

    ``n_params``: the base model, as a parameter count (a Llama-2-like shape of that size is assumed) or a
    preset name of :data:`lora101.memory.PRESETS` (e.g. "Llama-2-7B"); ``gpu_memory_gb``: decimal GB;
    ``batch_size`` x ``seq_len``: the tokens of one training step; ``gradient_checkpointing``: keep only each
    block's input and recompute the rest in the backward pass (QLoRA's usual setting).
    """

    n_params: float | str
    gpu_memory_gb: float
    prompting_good_enough: bool = False
    task_boundary_clear: bool = True
    base_is_strong: bool = True
    needs_new_knowledge: bool = False
    data_is_good: bool = True
    want_full_capacity: bool = False
    many_variants: bool = (
        False  # one base serving several task variants (adapters are small to store and swap)
    )
    batch_size: int = 1
    seq_len: int = 2048
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.n_params, str):
            if self.n_params not in PRESETS:
                raise ValueError(f"n_params: {self.n_params!r} is not a preset; presets: {list(PRESETS)}")
        elif (
            isinstance(self.n_params, bool)
            or not isinstance(self.n_params, (int, float))
            or not self.n_params >= 1e6
        ):
            raise ValueError(
                f"n_params must be a parameter count of at least 1e6 or a preset name, got {self.n_params!r}"
            )
        value = self.gpu_memory_gb
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"gpu_memory_gb must be a positive number, got {value!r}")
        for name in ("batch_size", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for f in fields(self):
            if f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"{f.name} must be True or False, got {getattr(self, f.name)!r}")

    @property
    def total_params(self) -> int:
        """The parameter count of the shape the predictor uses."""
        return estimate_memory(self.n_params, "full", activations=False).total_params


@dataclass(frozen=True)
class Decision:
    """The route (a key of :data:`ROUTES`) and the questions asked on the way, one line each."""

    route: str
    steps: tuple[str, ...]

    @property
    def summary(self) -> str:
        return ROUTES[self.route]

    def explain(self) -> str:
        return "\n".join(
            [*(f"{i}. {s}" for i, s in enumerate(self.steps, 1)), f"-> {self.route}: {self.summary}"]
        )


def memory_needed(situation: Situation) -> dict[str, MemoryBudget]:
    """Lesson 1's predicted budgets for full fine-tuning, LoRA and QLoRA in ``situation`` (see :data:`TRAINING`)."""
    s = situation
    return {
        method: estimate_memory(
            s.n_params,
            method,
            batch_size=s.batch_size,
            seq_len=s.seq_len,
            gradient_checkpointing=s.gradient_checkpointing,
            master_weights=(method == "full"),
            **TRAINING,
        )
        for method in ("full", "lora", "qlora")
    }


def _fit(need_gb: float, have_gb: float) -> str:
    if need_gb > have_gb:
        return "does not fit"
    if have_gb - need_gb < TIGHT_GB:
        return f"fits, tight (under {TIGHT_GB:g} GB left for the CUDA context the predictor does not count)"
    return "fits"


def decide(situation: Situation | None = None, /, **kwargs) -> Decision:
    """Walk the path for ``situation`` (or for ``Situation(**kwargs)``) and return the :class:`Decision`."""
    s = situation if situation is not None else Situation(**kwargs)
    steps: list[str] = []
    if s.prompting_good_enough:
        return Decision("prompting", ("prompting is good enough: yes",))
    steps.append("prompting is good enough: no")
    if not s.task_boundary_clear:
        return Decision("clarify", (*steps, "the task boundary is clear: no"))
    steps.append("the task boundary is clear: yes")
    for flag, route, question in (
        (not s.base_is_strong, "better_base", "the base model is strong enough"),
        (s.needs_new_knowledge, "retrieval", "no large body of new knowledge is needed"),
        (not s.data_is_good, "fix_data", "the training data is good"),
    ):
        if flag:
            return Decision(route, (*steps, f"{question}: no"))
        steps.append(f"{question}: yes")
    need = {method: b.total / GB for method, b in memory_needed(s).items()}
    have = s.gpu_memory_gb
    steps.append(
        f"memory by lesson 1's predictor: batch {s.batch_size} x {s.seq_len} tokens, gradient "
        f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, bf16, AdamW, LoRA r=16 on all linear layers"
    )
    full_fits = need["full"] <= have
    steps.append(f"full fine-tuning needs {need['full']:.3g} GB of {have:g} GB: {_fit(need['full'], have)}")
    if full_fits and s.want_full_capacity:
        return Decision("full", (*steps, "the task wants every weight to change: yes"))
    n = s.total_params
    if full_fits and n < SMALL_MODEL and not s.many_variants:
        return Decision(
            "full",
            (
                *steps,
                f"the model is small ({n / 1e9:.3g}B < 1B) and one variant is "
                "needed: full fine-tuning is the simpler choice",
            ),
        )
    for route, label in (("lora", "LoRA on the 16-bit base"), ("qlora", "QLoRA on the 4-bit base")):
        steps.append(f"{label} needs {need[route]:.3g} GB: {_fit(need[route], have)}")
        if need[route] <= have:
            return Decision(route, tuple(steps))
    return Decision("smaller_model", tuple(steps))
