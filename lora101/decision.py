"""The seeds' decision path as a function: prompting, LoRA, QLoRA, full fine-tuning, or something else first.

The path, in the order it asks (seed 000's "practical decision path", seed 002's "resource constraint
-> solution choice", seed 001's "when not to use LoRA/QLoRA"), with lesson 6's measurements beside it:

1. Is prompting good enough? Then stop: no training at all.
2. Is the task boundary clear? If not, clarify it before fine-tuning anything.
3. Is the base model strong enough for the task? If not, change the base: an adapter only adapts
   (lesson 6: LoRA on a freshly initialised SmolLM2 learnt nothing the pretrained one did).
4. Does the task need a large body of new knowledge? Then retrieval, not an adapter.
5. Is the data good? If not, fix the data first (lesson 6: wrong answers in the training set).
6. Memory, in decimal GB, with the exercise's rules: full fine-tuning needs 16 bytes a parameter
   (bf16 weights and gradients, fp32 master weights and Adam moments); LoRA the bf16 base (2 bytes a
   parameter) and QLoRA the NF4 base (``lora101.memory.NF4_BITS`` bits a parameter), each times 1.2
   for adapters and activations. Full fine-tuning when the task wants every weight to change, or
   when the model is small (seed 001: under 1B parameters) and only one variant is needed; else LoRA
   if the bf16 base fits, QLoRA if only the 4-bit base fits, and a smaller model if neither does.

Steps 1, 2 and 6 give exactly ``lora101.checks.reference_route`` (exercise 5) for every situation that
exercise can describe; steps 3 to 5 and the small-model rule are the seeds' "when LoRA is not enough".
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lora101.memory import NF4_BITS

FULL_BYTES = 2 + 2 + 8 + 4  # bf16 weight + bf16 gradient + Adam's two fp32 moments + fp32 master copy
LORA_BYTES = 2  # the frozen bf16 base
HEADROOM = 1.2  # adapters, their optimizer state and activations on top of the base
SMALL_MODEL = 1e9  # seed 001: "do not use LoRA/QLoRA for small models (under 1B)"

ROUTES: dict[str, str] = {
    "prompting": "no fine-tuning: prompting already does the job",
    "clarify": "clarify the task boundary before fine-tuning anything",
    "better_base": "choose a stronger base model: an adapter adapts, it does not create the ability",
    "retrieval": "use retrieval (or a bigger model) for the knowledge; fine-tune only the behaviour",
    "fix_data": "fix the training data first: an adapter learns the errors as faithfully as the rest",
    "full": "full fine-tuning",
    "lora": "LoRA on the 16-bit base",
    "qlora": "QLoRA: LoRA on the 4-bit NF4 base",
    "smaller_model": "a smaller base model: not even the 4-bit base fits",
}


@dataclass(frozen=True)
class Situation:
    """What the path asks about. ``n_params``: the base model's parameters; ``gpu_memory_gb``: decimal GB."""

    n_params: float
    gpu_memory_gb: float
    prompting_good_enough: bool = False
    task_boundary_clear: bool = True
    base_is_strong: bool = True
    needs_new_knowledge: bool = False
    data_is_good: bool = True
    want_full_capacity: bool = False
    many_variants: bool = False  # one base serving several task variants (adapters are small to store and swap)

    def __post_init__(self) -> None:
        for name in ("n_params", "gpu_memory_gb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for f in fields(self):
            if f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"{f.name} must be True or False, got {getattr(self, f.name)!r}")


@dataclass(frozen=True)
class Decision:
    """The route (a key of :data:`ROUTES`) and the questions asked on the way, one line each."""

    route: str
    steps: tuple[str, ...]

    @property
    def summary(self) -> str:
        return ROUTES[self.route]

    def explain(self) -> str:
        return "\n".join([*(f"{i}. {s}" for i, s in enumerate(self.steps, 1)), f"-> {self.route}: {self.summary}"])


def memory_needed_gb(n_params: float) -> dict[str, float]:
    """Decimal GB the path assumes for full fine-tuning, LoRA and QLoRA of an ``n_params`` model."""
    gb = n_params / 1e9
    return {"full": gb * FULL_BYTES, "lora": gb * LORA_BYTES * HEADROOM, "qlora": gb * NF4_BITS / 8 * HEADROOM}


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
    for flag, route, question in ((not s.base_is_strong, "better_base", "the base model is strong enough"),
                                  (s.needs_new_knowledge, "retrieval", "no large body of new knowledge is needed"),
                                  (not s.data_is_good, "fix_data", "the training data is good")):
        if flag:
            return Decision(route, (*steps, f"{question}: no"))
        steps.append(f"{question}: yes")
    need = memory_needed_gb(s.n_params)
    have = s.gpu_memory_gb
    full_fits = need["full"] <= have
    steps.append(f"full fine-tuning needs {need['full']:.3g} GB of {have:g} GB: {'fits' if full_fits else 'does not fit'}")
    if full_fits and s.want_full_capacity:
        return Decision("full", (*steps, "the task wants every weight to change: yes"))
    if full_fits and s.n_params < SMALL_MODEL and not s.many_variants:
        return Decision("full", (*steps, f"the model is small ({s.n_params / 1e9:.3g}B < 1B) and one variant is "
                                         "needed: full fine-tuning is the simpler choice"))
    for route, label in (("lora", "the bf16 base"), ("qlora", "the NF4 base")):
        fits = need[route] <= have
        steps.append(f"{label} + 20% needs {need[route]:.3g} GB: {'fits' if fits else 'does not fit'}")
        if fits:
            return Decision(route, tuple(steps))
    return Decision("smaller_model", tuple(steps))


def exercise_route(c: dict) -> str:
    """Exercise 5's ``choose_route(c)`` on top of :func:`decide`: the questions the exercise does not ask are
    answered "yes, fine", and the small-model rule is off (the exercise has none: ``many_variants=True``)."""
    keys = ("prompting_good_enough", "task_boundary_clear", "n_params", "gpu_memory_gb", "want_full_capacity")
    return decide(Situation(**{k: c[k] for k in keys}, many_variants=True)).route
