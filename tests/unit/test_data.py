"""lora101.data and lora101.tasks: the contract -> JSON task is reproducible, masked correctly, and its splits
do not overlap; the task registry finds it, and examples from files and tasks take one shape."""

from __future__ import annotations

import json
import re

import pytest

from lora101 import data, tasks
from lora101.tasks import contracts


def test_same_seed_same_examples_other_seed_other_examples():
    assert contracts.make_examples(50, "train", seed=3) == contracts.make_examples(50, "train", seed=3)
    assert contracts.make_examples(50, "train", seed=3) != contracts.make_examples(50, "train", seed=4)


def test_answers_are_canonical_json_with_fixed_key_order():
    for ex in contracts.make_examples(200, "train") + contracts.make_examples(100, "test"):
        rec = json.loads(ex["answer"])
        assert list(rec) == list(contracts.FIELDS)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", rec["date"])
        assert isinstance(rec["amount"], int) and isinstance(rec["months"], int)
        assert rec["currency"] in {"USD", "EUR", "GBP", "CHF"}
        # the amount as written in the sentence (with thousands separators) is the integer in the answer
        assert f"{rec['amount']:,}" in ex["sentence"]
        assert rec["payer"] in ex["sentence"] and rec["payee"] in ex["sentence"]


def test_training_set_is_varied():
    rows = contracts.make_examples(1200, "train")
    assert len({r["sentence"] for r in rows}) == 1200
    assert {r["template"] for r in rows} == set(range(len(contracts.templates("train"))))
    assert {json.loads(r["answer"])["type"] for r in rows} == {t.name for t in contracts.CONTRACT_TYPES}
    # terms in years must be converted to months: both kinds occur
    assert any("year" in r["sentence"] for r in rows) and any(" months" in r["sentence"] for r in rows)


def test_the_order_of_the_parties_does_not_give_the_answer_away():
    # If the payer were (nearly) always named first, a model could learn the order instead of the roles.
    for split, n in (("train", 1200), ("test", 200)):
        rows = contracts.make_examples(n, split)
        payer_first = [
            r["sentence"].index(r["record"]["payer"]) < r["sentence"].index(r["record"]["payee"])
            for r in rows
        ]
        assert 0.35 < sum(payer_first) / n < 0.65, (split, sum(payer_first) / n)


def test_splits_share_no_template_and_no_entity():
    assert not set(contracts.templates("train")) & set(contracts.templates("test"))
    assert not contracts.entity_words("train") & contracts.entity_words("test")
    train_parties = {
        json.loads(r["answer"])[k] for r in contracts.make_examples(1200, "train") for k in ("payer", "payee")
    }
    test_rows = contracts.make_examples(200, "test")
    test_parties = {json.loads(r["answer"])[k] for r in test_rows for k in ("payer", "payee")}
    assert not train_parties & test_parties
    train_words = {w for p in train_parties for w in p.split()}
    assert not {w for p in test_parties for w in p.split()} & train_words


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="split"):
        contracts.make_examples(3, "validation")
    with pytest.raises(ValueError, match="n must"):
        contracts.make_examples(0)


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from lora101.models import load_tokenizer

    return load_tokenizer()


def test_prompt_tokens_are_masked_and_answer_tokens_learned(tokenizer):
    ex = contracts.make_examples(1, "train")[0]
    enc = data.tokenize_example(tokenizer, contracts.build_messages(ex["sentence"]), ex["answer"])
    prompt = tokenizer(
        data.prompt_text(tokenizer, contracts.build_messages(ex["sentence"])), add_special_tokens=False
    )
    n_prompt = len(prompt["input_ids"])
    assert enc["input_ids"][:n_prompt] == prompt["input_ids"]
    assert enc["labels"][:n_prompt] == [data.IGNORE_INDEX] * n_prompt
    learned = enc["labels"][n_prompt:]
    assert learned == enc["input_ids"][n_prompt:] and data.IGNORE_INDEX not in learned
    # the learned part decodes to exactly the answer followed by the end-of-turn token
    assert tokenizer.decode(learned) == ex["answer"] + tokenizer.eos_token
    # and the whole sequence is what the chat template makes of the full conversation
    full = tokenizer.apply_chat_template(
        contracts.build_messages(ex["sentence"], ex["answer"]), tokenize=False
    )
    assert full.startswith(tokenizer.decode(enc["input_ids"]))


def test_build_dataset_is_a_datasetdict_with_masked_labels(tokenizer):
    from datasets import DatasetDict

    ds = contracts.build_dataset(tokenizer, n_train=40, n_test=10)
    assert isinstance(ds, DatasetDict) and set(ds) == {"train", "test"}
    assert ds["train"].num_rows == 40 and ds["test"].num_rows == 10
    for row in ds["train"]:
        assert len(row["input_ids"]) == len(row["labels"]) <= 192
        assert row["labels"][0] == data.IGNORE_INDEX and row["labels"][-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="max_length"):
        contracts.build_dataset(tokenizer, n_train=5, n_test=5, max_length=40)


def test_the_registry_lists_each_task_module_and_each_defines_the_interface():
    assert tasks.DEFAULT_TASK in tasks.task_names()
    for name in tasks.task_names():
        task = tasks.get_task(name)
        assert all(hasattr(task, attribute) for attribute in tasks.INTERFACE), name
        rows = task.make_examples(3, "train", 0)
        assert len(rows) == 3 and all(
            isinstance(r["sentence"], str) and isinstance(r["answer"], str) for r in rows
        )
        assert task.build_messages(rows[0]["sentence"])[-1] == {
            "role": "user",
            "content": rows[0]["sentence"],
        }
        assert task.score([rows[0]["answer"]], [rows[0]["answer"]])["exact_match"] == 1.0
    assert tasks.get_task() is contracts


def test_an_unknown_task_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'poems'.*contracts"):
        tasks.get_task("poems")


def test_task_examples_take_the_shape_of_examples_read_from_a_file(tmp_path):
    from_task = data.task_examples(contracts, 2, "test", seed=1)
    row = contracts.make_examples(2, "test", seed=1)[1]
    assert from_task[1] == {
        "messages": contracts.build_messages(row["sentence"]),
        "response": row["answer"],
        "line": 2,
    }
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"prompt": "2+2?", "response": "4"})
        + "\n\n"
        + json.dumps({"prompt": "3+3?", "response": "6"})
    )
    assert data.read_jsonl(path)[1] == {
        "messages": [{"role": "user", "content": "3+3?"}],
        "response": "6",
        "line": 3,
    }


def test_splits_come_from_the_task_or_from_a_file_with_a_share_held_out(tmp_path):
    sizes = dict(train_size=7, eval_size=3, eval_fraction=0.25, seed=0)
    train, held = data.load_splits(None, None, task=contracts, **sizes)
    assert (len(train), len(held)) == (7, 3)
    assert held == data.task_examples(contracts, 3, "test", 0)
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}?", "response": str(i)}) + "\n" for i in range(8)))
    train, held = data.load_splits(path, None, task=None, **sizes)
    assert (len(train), len(held)) == (6, 2)
    assert sorted(ex["line"] for ex in train + held) == list(range(1, 9))
    with pytest.raises(data.DataError, match="--eval-data needs --data"):
        data.load_splits(None, path, task=contracts, **sizes)
    with pytest.raises(data.DataError, match="--eval-fraction"):
        data.load_splits(path, None, task=None, **{**sizes, "eval_fraction": 1.5})


def test_next_token_labels_score_each_position_against_the_token_after_it():
    import torch

    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 3, 4, -100, -100]])
    assert data.next_token_labels(labels).tolist() == [[-100, 5, 6, 7, -100], [3, 4, -100, -100, -100]]
    assert labels[0, 0] == -100 and labels[0, 4] == 7, "labels is left as it was"
