"""Which linear layers of a Llama-style block get adapters: the names, and the one parser of target specs.

A target spec is what ``--targets``, ``Run.targets``, ``estimate_memory(target_modules=...)`` and
``ft.add_lora(targets=...)`` accept:

* ``"all-linear"``: the seven projections of every block (PEFT's own keyword, which, like here, leaves out
  the output layer);
* ``"attention"`` or ``"mlp"``: the four attention or three MLP projections;
* module names, comma-separated (``"q_proj,v_proj"``) or as a list (``["q_proj", "v_proj"]``).
"""

from __future__ import annotations

from collections.abc import Iterable

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEAR = ATTENTION + MLP  # every linear layer of a block, in the order a block applies them
ALL_LINEAR = "all-linear"
GROUPS = {ALL_LINEAR: LINEAR, "attention": ATTENTION, "mlp": MLP}


def parse_targets(spec: str | Iterable[str], argument: str = "target_modules") -> tuple[str, ...]:
    """The module names ``spec`` adapts, in the order given, each once.

    ``argument`` names the caller's parameter in the error a bad spec raises.
    """
    if isinstance(spec, str):
        if spec in GROUPS:
            return GROUPS[spec]
        spec = spec.split(",")
    names = tuple(dict.fromkeys(name.strip() for name in spec if name.strip()))
    unknown = [name for name in names if name not in LINEAR]
    if not names or unknown:
        raise ValueError(
            f"{argument}: {unknown or spec!r} not understood; use {ALL_LINEAR!r}, 'attention', 'mlp' "
            f"or module names from {LINEAR} (comma-separated or a list)"
        )
    return names
