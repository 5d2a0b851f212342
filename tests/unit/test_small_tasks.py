"""lora101.small_tasks: lesson 8's tasks are reproducible, well formed, and their held-out split is unseen."""

from __future__ import annotations

import re

import pytest

from lora101.small_tasks import FIRST, LAST, SYSTEM, make

PERSON = re.compile(rf"\b({'|'.join(FIRST)}) ({'|'.join(LAST)})\b")


@pytest.mark.parametrize("task", sorted(SYSTEM))
def test_the_same_arguments_give_the_same_examples(task):
    assert make(task, 50, "train", 0) == make(task, 50, "train", 0)
    assert make(task, 50, "train", 0) != make(task, 50, "train", 1)


def test_dates_answer_the_date_in_the_sentence_and_test_years_are_unseen():
    for split, years in (("train", range(1990, 2020)), ("test", range(2020, 2030))):
        for example in make("dates", 300, split, 0):
            year, month, day = map(int, re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)", example["response"]).groups())
            sentence = example["messages"][1]["content"]
            assert year in years and 1 <= month <= 12 and 1 <= day <= 28
            assert str(year) in sentence and str(day) in sentence


def test_initials_match_the_name_and_test_names_are_unseen():
    def people(split):
        found = set()
        for example in make("initials", 300, split, 0):
            first, last = PERSON.search(example["messages"][1]["content"]).groups()
            assert example["response"] == f"{first[0]}. {last[0]}."
            found.add((first, last))
        return found

    train, test = people("train"), people("test")
    assert not {f for f, _ in train} & {f for f, _ in test}
    assert not {la for _, la in train} & {la for _, la in test}


def test_every_example_carries_its_tasks_instruction():
    for task, instruction in SYSTEM.items():
        assert all(
            e["messages"][0] == {"role": "system", "content": instruction} for e in make(task, 20, "test")
        )


@pytest.mark.parametrize(
    ("args", "name"), [(("sums", 3, "train"), "task"), (("dates", 3, "validation"), "split")]
)
def test_a_wrong_task_or_split_is_named(args, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        make(*args)
