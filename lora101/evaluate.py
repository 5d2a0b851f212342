"""Task metrics, every evaluator of the package: greedy generation scored as parsed JSON, and teacher forcing.

Two ways to score a model on held-out examples:

* :func:`evaluate_model` - :func:`generate` greedy answers, then :func:`score` them: exact match and
  per-field accuracy. A generation counts as an exact match when it parses as JSON and equals the
  reference record (the same keys with the same values; key order does not matter once parsed). When the
  references are not JSON (a learner's own data), exact match compares the stripped texts. The fine-tune
  (:func:`lora101.finetune.run`) reports these before and after training.
* :func:`teacher_forced` - one forward pass a batch with the reference answer in place: test loss, token
  accuracy and a stricter exact match (token for token), about 50x cheaper than generating on a CPU, which
  is what makes lesson 6's sweeps (:mod:`lora101.sweep`) affordable there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from lora101.data import collator, next_token_labels


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 72,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy completions of ``prompts`` (already chat-formatted texts), in order.

    Batches are left-padded, so that every prompt ends where generation starts; the tokenizer's
    padding side is restored afterwards. Returns the new text only, without special tokens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
            batch = list(prompts[start : start + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in out]


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Exact match and per-field accuracy of ``predictions`` against ``references`` (equal lengths).

    Returns ``exact_match`` (fraction in [0, 1]), ``valid_json`` (fraction of predictions that parse
    as a JSON object, where references do), ``fields`` (key -> fraction correct, for JSON-object
    references) and ``n``.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) differ in length"
        )
    if not references:
        raise ValueError("references is empty: nothing to score")
    exact = 0
    valid = 0
    field_hits: dict[str, int] = {}
    field_total: dict[str, int] = {}
    for pred, ref in zip(predictions, references, strict=False):
        ref_obj, pred_obj = _parse(ref), _parse(pred)
        if isinstance(ref_obj, dict):
            ok_obj = isinstance(pred_obj, dict)
            valid += ok_obj
            exact += ok_obj and pred_obj == ref_obj
            for key, value in ref_obj.items():
                field_total[key] = field_total.get(key, 0) + 1
                field_hits[key] = field_hits.get(key, 0) + (ok_obj and pred_obj.get(key) == value)
        else:
            exact += pred.strip() == ref.strip()
    n = len(references)
    result: dict[str, Any] = {"n": n, "exact_match": exact / n}
    if field_total:
        result["valid_json"] = valid / n
        result["fields"] = {k: field_hits[k] / field_total[k] for k in field_total}
    return result


def evaluate_model(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[str],
    *,
    scorer: Callable[[Sequence[str], Sequence[str]], dict[str, Any]] = score,
    **generate_kwargs,
) -> tuple[dict[str, Any], list[str]]:
    """Generate for ``prompts`` and score against ``references``: (metrics, predictions).

    ``scorer`` is :func:`score` unless a task brings its own (``lora101.tasks``: a task's ``score``)."""
    predictions = generate(model, tokenizer, prompts, **generate_kwargs)
    return scorer(predictions, references), predictions


@torch.no_grad()
def teacher_forced(model, tokenizer, dataset, *, batch_size: int = 8) -> dict[str, Any]:
    """Teacher-forced scores of ``model`` on ``dataset`` (tokenised examples: columns ``input_ids``,
    ``attention_mask`` and ``labels`` with the prompt masked as -100, as :func:`lora101.data.tokenize_example`
    writes them), one forward pass a batch with the reference answer in place:

    * ``test_loss`` - cross-entropy of the reference answer's tokens (and the end-of-turn token);
    * ``token_accuracy`` - the fraction of those tokens that are the model's top choice;
    * ``exact_match`` - the fraction of examples whose every answer token is the top choice (``exact`` of
      ``n``). This is exactly "greedy decoding reproduces the reference answer, character for character,
      and stops": greedy decoding emits the top token given what came before, so by induction it reproduces
      the reference iff the top token is right at every position given the reference prefix. It is stricter
      than :func:`score`, which parses the JSON and so forgives spacing.

    Also ``answer_tokens``, the tokens scored. No generation loop: about 50x cheaper than
    :func:`evaluate_model` on a CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to score")
    rows = dataset.select_columns(["input_ids", "attention_mask", "labels"])
    device = next(model.parameters()).device
    collate = collator(tokenizer)
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    hits = tokens = exact = 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            target = next_token_labels(batch["labels"])  # position t predicts token t+1
            mask = target != -100
            loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum"))
            right = (logits.argmax(-1) == target) & mask
            hits += int(right.sum())
            tokens += int(mask.sum())
            exact += int((right | ~mask).all(dim=1).sum())
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("no answer tokens to score: every label is -100")
    return {
        "test_loss": loss_sum / tokens,
        "token_accuracy": hits / tokens,
        "exact_match": exact / len(rows),
        "exact": exact,
        "n": len(rows),
        "answer_tokens": tokens,
    }


def side_by_side(
    sentences: Sequence[str],
    references: Sequence[str],
    before: Sequence[str],
    after: Sequence[str],
    n: int = 4,
) -> str:
    """A plain-text table of ``n`` examples: the input, the reference, and both generations."""
    lines = []
    for i in range(min(n, len(sentences))):
        lines += [
            f"[{i}] {sentences[i]}",
            f"    expected: {references[i]}",
            f"    before  : {before[i]}" + ("  (exact)" if _same(before[i], references[i]) else ""),
            f"    after   : {after[i]}" + ("  (exact)" if _same(after[i], references[i]) else ""),
        ]
    return "\n".join(lines)


def _same(pred: str, ref: str) -> bool:
    return score([pred], [ref])["exact_match"] == 1.0
