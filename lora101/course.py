"""Settings that the course's own test harness changes, kept out of the lessons' code.

The browser test and the Colab stand-in run every lesson only to check that it renders and runs in
that environment; they set ``LORA101_QUICK=1`` and the lessons train for a few steps instead of their
full length. A lesson writes ``steps = lesson_steps(60)`` and reads as "60 steps".
"""

from __future__ import annotations

import os

QUICK_ENV = "LORA101_QUICK"


def quick_run() -> bool:
    """True when the course is being rendered by a test harness (``LORA101_QUICK=1``), not studied."""
    return os.environ.get(QUICK_ENV) == "1"


def lesson_steps(steps: int, quick_steps: int = 3) -> int:
    """``steps`` (a lesson's training length), or ``min(steps, quick_steps)`` in a quick run."""
    if steps < 1 or quick_steps < 1:
        raise ValueError(f"steps must be 1 or more, got steps={steps}, quick_steps={quick_steps}")
    return min(steps, quick_steps) if quick_run() else steps
