"""Fine-tuning data, whatever the task: chat prompts, masked tokens, and your own JSONL.

The built-in tasks (the contract -> JSON one of lesson 5 among them) live in :mod:`lora101.tasks`;
what every task and every file of examples goes through lives here:

* :func:`prompt_text` - the chat template applied to the prompt, up to where the answer starts;
* :func:`tokenize_example` - prompt + answer as token ids, prompt tokens masked out of the loss (-100);
* :func:`collator` and :func:`next_token_labels` - batches of those, padded, and the label each position
  is scored against (training's loss and :func:`lora101.evaluate.teacher_forced` read the same ones);
* :func:`read_jsonl` - your examples, one JSON object a line, either ``{"prompt": ..., "response": ...}``
  or ``{"messages": [..., {"role": "assistant", "content": ...}]}``; bad lines are refused naming the
  file and line (:class:`DataError`);
* :func:`load_splits` - (train, held-out) examples from your files or from a built-in task;
* :func:`tokenize_examples` - those examples as a ``datasets.Dataset`` of token ids.

An example, from a file or a task, is ``{"messages": [...], "response": str, "line": int}``: the prompt as
chat messages, the answer to learn, and where it came from (its line in the file).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import ModuleType
from typing import Any

from lora101.errors import UsageError

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips: prompt tokens do not count in the loss


class DataError(UsageError):
    """Bad training data; the message names the file and line."""


# ------------------------------------------------------------------------------------------------
# Prompts and tokens


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template applied to ``messages`` (no assistant turn) plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_example(
    tokenizer, prompt_messages: list[dict[str, str]], response: str, max_length: int | None = None
) -> dict[str, list[int]]:
    """Token ids of prompt + response with the chat template applied, and labels that mask the prompt.

    ``input_ids`` = prompt tokens (system, user, ``<|im_start|>assistant\\n``) followed by the
    response tokens and the end-of-turn token; ``labels`` is the same list with every prompt token
    replaced by -100, so only the response (and the end-of-turn that teaches the model to stop)
    is learned. Raises ValueError if the result is longer than ``max_length``.
    """
    prompt_ids = tokenizer(prompt_text(tokenizer, prompt_messages), add_special_tokens=False)["input_ids"]
    # The answer ends with the end-of-turn token, exactly as the chat template would close it.
    end = tokenizer.eos_token or ""
    response_ids = tokenizer(response + end, add_special_tokens=False)["input_ids"]
    input_ids = list(prompt_ids) + list(response_ids)
    if max_length is not None and len(input_ids) > max_length:
        raise ValueError(f"example has {len(input_ids)} tokens, more than max_length={max_length}")
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def collator(tokenizer):
    """Batches of tokenised examples: ``input_ids`` padded with the pad token, ``labels`` with -100 (so padding
    is never learned or scored)."""
    from transformers import DataCollatorForSeq2Seq  # inside: importing transformers takes seconds

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)


def next_token_labels(labels):
    """The label each position's logits are scored against: ``labels`` moved one to the left, -100 last.

    (batch, seq) -> (batch, seq), a new tensor. The logits at position t predict token t + 1, so a position
    whose next-token label is -100 (the prompt, the padding, the last token) is never scored.
    """
    shifted = labels.roll(-1, dims=1)
    shifted[:, -1] = IGNORE_INDEX
    return shifted


def tokenize_examples(tokenizer, examples: list[dict], path: Path | None, max_length: int):
    """A ``datasets.Dataset`` of token ids with the prompt masked; DataError (file:line) if too long.

    An example whose text is longer than ``max_length`` of the tokenizer's longest tokens is refused before
    it is tokenised: a 10 MB line costs no more than a short one.
    """
    from datasets import Dataset  # inside: importing datasets takes about 2 s, and every command imports this

    longest = longest_token_chars(tokenizer)
    rows = []
    for ex in examples:
        where = f"{path}:{ex['line']}" if path else f"example {ex['line']}"
        chars = len(ex["response"]) + sum(len(m["content"]) for m in ex["messages"])
        if chars > max_length * longest:
            raise DataError(
                f"{where}: the example has {chars:,} characters, more than --max-length {max_length} tokens "
                f"can hold (a token is at most {longest} characters); shorten it"
            )
        encoded = tokenize_example(tokenizer, ex["messages"], ex["response"])
        if len(encoded["input_ids"]) > max_length:
            raise DataError(
                f"{where}: the example has {len(encoded['input_ids'])} tokens, longer than the context "
                f"--max-length {max_length}; shorten it or raise --max-length"
            )
        rows.append(encoded)
    return Dataset.from_list(rows)


_LONGEST: dict[int, int] = {}


def longest_token_chars(tokenizer) -> int:
    """The most characters one token of ``tokenizer`` stands for (an upper bound: its vocabulary's longest
    entry, where byte-level tokens spell each byte as one character)."""
    key = id(tokenizer)
    if key not in _LONGEST:
        _LONGEST[key] = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return _LONGEST[key]


# ------------------------------------------------------------------------------------------------
# Reading your examples


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Examples from a JSONL file as ``{"messages": [...], "response": str, "line": int}``.

    Raises DataError naming the file and line for: a missing or empty file, a line that is not UTF-8,
    malformed or too deeply nested JSON, a line that is not an object, missing or empty fields, text that
    is not valid Unicode (a lone surrogate escape), messages that do not end with the assistant.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            obj = _parse_line(raw, where)
            if obj is not None:
                out.append({**_example(obj, where), "line": number})
    if not out:
        raise DataError(f"{path}: the file is empty (no examples)")
    return out


def _parse_line(raw: bytes, where: str) -> dict | None:
    """One line's JSON object (None for a blank line); DataError naming ``where`` for anything else."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1}); save the file "
            "as UTF-8"
        ) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(
            f"{where}: the JSON is nested too deeply to read; an example is one flat object"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_text(text: str, where: str, name: str) -> None:
    """DataError when ``text`` holds a lone surrogate (a ``\\ud800``-style escape that is no character)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{where}: {name} holds {text[err.start]!r} at character {err.start + 1}, half of a surrogate "
            "pair, which is not a character; fix the escape"
        ) from None


def _example(obj: dict, where: str) -> dict[str, Any]:
    if "messages" in obj:
        return _chat_example(obj["messages"], where)
    missing = [k for k in ("prompt", "response") if not isinstance(obj.get(k), str) or not obj[k].strip()]
    if missing:
        raise DataError(
            f"{where}: missing or empty field(s) {missing}; each line needs 'prompt' and 'response' "
            "strings, or a chat 'messages' list"
        )
    _check_text(obj["prompt"], where, "'prompt'")
    _check_text(obj["response"], where, "'response'")
    return {"messages": [{"role": "user", "content": obj["prompt"]}], "response": obj["response"]}


def _chat_example(msgs: Any, where: str) -> dict[str, Any]:
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise DataError(f"{where}: 'messages' must be a list of at least two messages")
    for i, m in enumerate(msgs):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(f"{where}: message {i} needs string 'role' and 'content'")
        _check_text(m["content"], where, f"message {i}")
    if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
        raise DataError(f"{where}: the last message must be a non-empty 'assistant' answer to learn")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]],
        "response": msgs[-1]["content"],
    }


# ------------------------------------------------------------------------------------------------
# Training and held-out examples


def task_examples(task: ModuleType, n: int, split: str, seed: int) -> list[dict[str, Any]]:
    """``n`` examples of a built-in task's ``split`` (see :mod:`lora101.tasks`), in the form files give."""
    rows = task.make_examples(n, split, seed)
    return [
        {"messages": task.build_messages(r["sentence"]), "response": r["answer"], "line": i + 1}
        for i, r in enumerate(rows)
    ]


def load_splits(
    data: Path | None,
    eval_data: Path | None,
    *,
    task: ModuleType | None,
    train_size: int,
    eval_size: int,
    eval_fraction: float,
    seed: int,
) -> tuple[list[dict], list[dict]]:
    """(train, held-out) examples: from ``data`` and ``eval_data``, from ``data`` with ``eval_fraction`` of it
    held out, or, without ``data``, from a built-in ``task`` (its train split and its own test split).

    At most ``eval_size`` held-out examples; ``train_size`` and ``seed`` size and draw a task's examples.
    """
    if data is None:
        if eval_data is not None:
            raise DataError("--eval-data needs --data (the built-in task has its own held-out test set)")
        return task_examples(task, train_size, "train", seed), task_examples(task, eval_size, "test", seed)
    train = read_jsonl(data)
    if eval_data is not None:
        held = read_jsonl(eval_data)
    else:
        train, held = _hold_out(train, data, eval_fraction, seed)
    return train, held[:eval_size]


def _hold_out(examples: list[dict], path: Path, fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): ``fraction`` of ``examples``, at least one, drawn with ``seed``."""
    if not 0 < fraction < 1:
        raise DataError(f"--eval-fraction must be between 0 and 1, got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    k = max(1, round(len(examples) * fraction))
    if len(examples) - k < 1:
        raise DataError(f"{path}: {len(examples)} example(s) are too few to hold some out; pass --eval-data")
    return [examples[i] for i in order[k:]], [examples[i] for i in order[:k]]
