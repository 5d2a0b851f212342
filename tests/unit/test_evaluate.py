"""lora101.evaluate: exact match and per-field accuracy of parsed JSON, and the teacher-forced scores (the
claim that their exact match is greedy decoding is checked against generate in tests/integration/test_sweep.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from lora101 import evaluate
from lora101.data import tokenize_example
from lora101.tasks import contracts

RECORD = '{"payer": "Ann", "amount": 5}'


def test_score_compares_parsed_json_and_counts_each_field():
    predictions = ['{"amount": 5, "payer": "Ann"}', '{"payer": "Bo", "amount": 5}', "not json"]
    result = evaluate.score(predictions, [RECORD] * 3)
    assert result["n"] == 3 and result["exact_match"] == pytest.approx(1 / 3)  # key order does not matter
    assert result["valid_json"] == pytest.approx(2 / 3)
    assert result["fields"] == {"payer": pytest.approx(1 / 3), "amount": pytest.approx(2 / 3)}
    assert evaluate.score([" a b "], ["a b"]) == {"n": 1, "exact_match": 1.0}  # not JSON: stripped texts
    with pytest.raises(ValueError, match="differ in length"):
        evaluate.score(["x"], [])


def test_side_by_side_marks_the_exact_answers_as_score_counts_them():
    text = evaluate.side_by_side(
        ["s"], [RECORD], ['{"payer": "Bo", "amount": 5}'], ['{"amount": 5, "payer": "Ann"}']
    )
    before, after = text.splitlines()[2:]
    assert "(exact)" not in before and after.endswith("(exact)")


class Oracle(torch.nn.Module):
    """Teacher forcing's perfect model: at each position, its top choice is the token that follows in its input."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, attention_mask):
        following = input_ids.roll(-1, dims=1)
        return SimpleNamespace(logits=30.0 * torch.nn.functional.one_hot(following, self.vocab_size).float())


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    from lora101.models import load_tokenizer

    return load_tokenizer()


def _dataset(tokenizer, n: int):
    rows = [
        tokenize_example(tokenizer, contracts.build_messages(ex["sentence"]), ex["answer"])
        for ex in contracts.make_examples(n, "test")
    ]
    return rows, Dataset.from_list(rows)


def test_teacher_forced_counts_an_example_exact_only_if_every_answer_token_is_the_top_choice(tokenizer):
    rows, dataset = _dataset(tokenizer, 5)
    answer_tokens = sum(sum(label != -100 for label in row["labels"]) for row in rows)
    oracle = Oracle(len(tokenizer)).train()
    for batch_size in (1, 2, 8):  # padding inside a batch changes nothing
        scores = evaluate.teacher_forced(oracle, tokenizer, dataset, batch_size=batch_size)
        assert scores["exact"] == scores["n"] == 5 and scores["exact_match"] == 1.0
        assert scores["token_accuracy"] == 1.0 and scores["answer_tokens"] == answer_tokens
        assert scores["test_loss"] < 1e-3
    assert oracle.training, "the model's training mode is restored"
    # one answer token of the second example is not what the input holds: the oracle misses it there only
    wrong = [dict(row) for row in rows]
    labels = list(wrong[1]["labels"])
    labels[-3] = (labels[-3] + 1) % len(tokenizer)
    wrong[1]["labels"] = labels
    scores = evaluate.teacher_forced(oracle, tokenizer, Dataset.from_list(wrong), batch_size=2)
    assert scores["exact"] == 4 and scores["exact_match"] == pytest.approx(0.8)
    assert scores["token_accuracy"] == pytest.approx((answer_tokens - 1) / answer_tokens)
    assert scores["test_loss"] > 29 / answer_tokens  # the missed token costs about 30 nats


def test_teacher_forced_refuses_what_it_cannot_score(tokenizer):
    rows, dataset = _dataset(tokenizer, 1)
    oracle = Oracle(len(tokenizer))
    with pytest.raises(ValueError, match="batch_size"):
        evaluate.teacher_forced(oracle, tokenizer, dataset, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate.teacher_forced(oracle, tokenizer, dataset.select([]))
    masked = Dataset.from_list([{**rows[0], "labels": [-100] * len(rows[0]["labels"])}])
    with pytest.raises(ValueError, match="no answer tokens"):
        evaluate.teacher_forced(oracle, tokenizer, masked)
