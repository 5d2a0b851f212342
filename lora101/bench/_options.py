"""Checks of the benchmarks' options, each refusal an :class:`lora101.errors.OptionError` naming the option.

``cli.main`` prints it as one line with exit status 2: a benchmark never shows a traceback for bad input.
"""

from __future__ import annotations

import argparse

import torch

from lora101.errors import OptionError
from lora101.models import choose_device


def positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse any of the integer options ``names`` (attribute names: ``batch_size``) below 1."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise OptionError("--" + name.replace("_", "-"), f"must be a positive integer, got {value}")


def device(text: str | None, option: str = "--device") -> torch.device:
    """The device ``text`` names; refused when torch does not know it or this machine lacks it."""
    try:
        return choose_device(text)
    except ValueError as err:
        # choose_device says "device: <what is wrong>", the value included: keep what is wrong
        raise OptionError(option, str(err).partition(": ")[2] or str(err)) from None


def integers(text: str, option: str, low: int, high: int) -> list[int]:
    """A comma-separated list of integers in [``low``, ``high``]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OptionError(option, f"{text!r} is not a comma-separated list of integers") from None
    bad = [v for v in values if not low <= v <= high]
    if not values or bad:
        raise OptionError(option, f"give integers from {low} to {high}, got {text!r}")
    return values
