"""The built-in fine-tuning tasks, one module each: ``lora101 finetune --task NAME`` trains on one.

A task is a module in this package, found by its file name (``lora101/tasks/NAME.py`` is ``--task NAME``),
so adding one is adding one module. It defines:

* ``DESCRIPTION`` - one line saying what goes in and what comes out;
* ``FIELDS`` - the keys of the JSON record an answer holds (reported one by one by ``score``);
* ``make_examples(n, split, seed)`` - ``n`` examples of ``split`` ("train" or "test": a held-out set the
  training set never overlaps) as dicts with at least ``sentence`` (the input) and ``answer`` (the text
  to learn); the same seed gives the same examples;
* ``build_messages(sentence, answer=None)`` - the prompt format: the chat the model sees for one input;
* ``build_dataset(tokenizer=None, n_train, n_test, seed, max_length)`` - a ``datasets.DatasetDict`` with
  ``train`` and ``test`` splits, tokenised (prompt masked, :func:`lora101.data.tokenize_example`) when
  a tokenizer is given;
* ``score(predictions, references)`` - the metrics reported before and after training (a dict with
  ``exact_match`` and ``n``, as :func:`lora101.evaluate.score` returns).

:mod:`lora101.tasks.contracts` (a contract sentence in, a JSON record out) is the default and lesson 5's task.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

DEFAULT_TASK = "contracts"
INTERFACE = ("DESCRIPTION", "FIELDS", "make_examples", "build_messages", "build_dataset", "score")


def task_names() -> list[str]:
    """The built-in tasks' names, sorted: the modules of this package (read without importing them)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_task(name: str = DEFAULT_TASK) -> ModuleType:
    """The task module called ``name``; ValueError naming the known tasks for any other name."""
    known = task_names()
    if name not in known:
        raise ValueError(f"unknown task {name!r}; the built-in tasks are: {', '.join(known)}")
    task = importlib.import_module(f"{__name__}.{name}")
    missing = [attribute for attribute in INTERFACE if not hasattr(task, attribute)]
    if missing:
        raise TypeError(f"{task.__name__} is missing {', '.join(missing)}: a task defines all of {INTERFACE}")
    return task
