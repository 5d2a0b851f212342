"""Lesson 8's two small tasks, as chat examples a 135M model learns in a couple of dozen steps.

* ``dates``: a sentence with a date written out in words, in; the date as ``YYYY-MM-DD``, out;
* ``initials``: a sentence naming a person, in; their initials (``A. L.``), out.

Each example is ``{"messages": [system, user], "response": answer}``, the form :func:`lora101.data.read_jsonl`
reads. The held-out ("test") split draws years and names the training split never contains (2020-2029; the
last third of the first and last names), so a right answer there is not a remembered one.
"""

from __future__ import annotations

import random

MONTHS = tuple(
    "January February March April May June July August September October November December".split()
)
FIRST = tuple(
    "Ada Grace Alan Emmy Kurt Rosalind Niels Marie Paul Lise Carl Sofia "
    "Hedy Enrico Chien Katherine Tim Barbara John Dorothy Edsger Frances Linus Radia".split()
)
LAST = tuple(
    "Lovelace Hopper Turing Noether Goedel Franklin Bohr Curie Dirac Meitner Gauss Kovalevskaya "
    "Lamarr Fermi Wu Johnson Berners Liskov Nash Hodgkin Dijkstra Allen Torvalds Perlman".split()
)
SYSTEM = {
    "dates": "Reply with the date in the sentence as YYYY-MM-DD and nothing else.",
    "initials": "Reply with the initials of the person in the sentence, like A. B., and nothing else.",
}
TRAIN_NAMES = 16  # the first 16 first and last names are the training split's, the rest the test split's


def ordinal(day: int) -> str:
    """1 -> '1st', 12 -> '12th', 22 -> '22nd'."""
    return f"{day}{'th' if 10 <= day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def _dates(rng: random.Random, split: str) -> tuple[str, str]:
    year = rng.randrange(2020, 2030) if split == "test" else rng.randrange(1990, 2020)
    month, day = rng.randrange(1, 13), rng.randrange(1, 29)
    name = MONTHS[month - 1]
    said = rng.choice(
        [f"the {ordinal(day)} of {name} {year}", f"{name} {day}, {year}", f"{day} {name} {year}"]
    )
    template = rng.choice(
        ["The lease starts on {}.", "Payment is due {}.", "We met on {} in Lyon.", "The contract ends {}."]
    )
    return template.format(said), f"{year}-{month:02d}-{day:02d}"


def _initials(rng: random.Random, split: str) -> tuple[str, str]:
    first = rng.choice(FIRST[TRAIN_NAMES:] if split == "test" else FIRST[:TRAIN_NAMES])
    last = rng.choice(LAST[TRAIN_NAMES:] if split == "test" else LAST[:TRAIN_NAMES])
    template = rng.choice(
        [
            "{} signed the contract.",
            "The report was written by {}.",
            "Call {} tomorrow.",
            "Yesterday {} won the prize.",
        ]
    )
    return template.format(f"{first} {last}"), f"{first[0]}. {last[0]}."


def make(task: str, n: int, split: str, seed: int = 0) -> list[dict]:
    """``n`` examples of ``task`` ("dates" or "initials") from ``split`` ("train" or "test"); the same
    arguments give the same examples."""
    if task not in SYSTEM:
        raise ValueError(f"task: {task!r} is not one of {sorted(SYSTEM)}")
    if split not in ("train", "test"):
        raise ValueError(f"split: {split!r} is neither 'train' nor 'test'")
    rng = random.Random(f"{task}-{split}-{seed}")
    draw = _dates if task == "dates" else _initials
    out = []
    for _ in range(n):
        text, answer = draw(rng, split)
        messages = [{"role": "system", "content": SYSTEM[task]}, {"role": "user", "content": text}]
        out.append({"messages": messages, "response": answer})
    return out
