"""Which lessons the slow front-end tests run: a knob, because each lesson run there repeats work nbval does.

nbval runs every lesson top to bottom and checks its outputs. The browser test (JupyterLab's rendering) and
the Colab stand-in (Colab's package versions) run lessons again, with training cut short (LORA101_QUICK=1);
on a 2-core CI machine running them all would not fit CI's time, so each picks by default the lessons whose
front-end or version-sensitive paths no other test covers, and `all` (or a list) runs more.
"""

from __future__ import annotations

import os
from pathlib import Path


def selected_lessons(lessons: list[Path], variable: str, default: str) -> list[Path]:
    """The lessons named by the environment variable ``variable`` (``all``, or numbers such as ``01,05``),
    else by ``default``; a number that matches no lesson is an error, not a silent skip."""
    value = os.environ.get(variable, default).strip()
    if value == "all":
        return lessons
    wanted = {part.strip() for part in value.split(",") if part.strip()}
    unknown = wanted - {p.name[:2] for p in lessons}
    if unknown:
        raise ValueError(f"{variable}={value!r}: no lesson numbered {sorted(unknown)} in lessons/")
    return [p for p in lessons if p.name[:2] in wanted]
