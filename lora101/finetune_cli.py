"""``lora101 finetune``: the lesson's QLoRA job from the command line, on the built-in task or your own data.

Your data is JSONL, one example a line, either ``{"prompt": "...", "response": "..."}`` or
``{"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}``
(the last message is the answer to learn). Without ``--data`` it trains on the built-in contract
-> JSON task of :mod:`lora101.data`.

It writes into ``--output``: the adapter (PEFT format), ``report.json`` (``before`` and ``after``
metrics, tokens/s, peak memory, wall time, versions, the configuration), ``loss.png`` and
``checkpoints/`` (for ``--resume``). An output folder that already holds an adapter is never
overwritten unless ``--overwrite`` (or ``--resume``) is given.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from lora101.doctor import installed_versions
from lora101.models import DEFAULT_MODEL

REPORT = "report.json"
BEFORE = "before.json"  # the base model's scores, kept so that --resume need not measure them again


class DataError(ValueError):
    """Bad training data; the message names the file and line."""


def register(subparsers) -> None:
    """Add the ``finetune`` command to the ``lora101`` parser."""
    p = subparsers.add_parser(
        "finetune",
        help="QLoRA (or LoRA) fine-tune on the built-in task or your JSONL; reports exact match before/after",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled name, local folder or hub id (default %(default)s)")
    p.add_argument("--data", type=Path, help="JSONL of prompt/response pairs or chat messages (default: built-in task)")
    p.add_argument("--eval-data", type=Path, help="JSONL to evaluate on (default: hold out --eval-fraction of --data)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of --data held out (default %(default)s)")
    p.add_argument("--eval-size", type=int, default=60, help="at most this many evaluation examples (default %(default)s)")
    p.add_argument("--train-size", type=int, default=1200, help="built-in task: training examples (default %(default)s)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--targets", default="all-linear", help="'all-linear' or comma-separated module names (q_proj,v_proj)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", choices=["nf4", "bf16"], default="nf4", help="nf4 = QLoRA (default), bf16 = LoRA")
    p.add_argument("--max-length", type=int, default=512, help="longest example in tokens (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=72)
    p.add_argument("--save-steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: automatic)")
    p.add_argument("--mixed-precision", choices=["auto", "bf16", "no"], default="auto",
                   help="bf16 autocast: auto = on GPUs with native bf16 (compute capability 8.0+) only; "
                   "bf16 forces it (a CPU runs it too), no turns it off")
    p.add_argument("--output", type=Path, required=True, help="folder for the adapter, report.json, loss.png")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an adapter already in --output")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------
# Reading data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Examples from a JSONL file as ``{"messages": [...], "response": str, "line": int}``.

    Raises DataError naming the file and line for: a missing or empty file, malformed JSON, a line
    that is not an object, missing or empty fields, messages that do not end with the assistant.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            out.append({**_example(obj, where), "line": number})
    if not out:
        raise DataError(f"{path}: the file is empty (no examples)")
    return out


def _example(obj: dict, where: str) -> dict[str, Any]:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise DataError(f"{where}: 'messages' must be a list of at least two messages")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} needs string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise DataError(f"{where}: the last message must be a non-empty 'assistant' answer to learn")
        return {"messages": [dict(role=m["role"], content=m["content"]) for m in msgs[:-1]],
                "response": msgs[-1]["content"]}
    missing = [k for k in ("prompt", "response") if not isinstance(obj.get(k), str) or not obj[k].strip()]
    if missing:
        raise DataError(
            f"{where}: missing or empty field(s) {missing}; each line needs 'prompt' and 'response' "
            "strings, or a chat 'messages' list"
        )
    return {"messages": [{"role": "user", "content": obj["prompt"]}], "response": obj["response"]}


def tokenize_examples(tokenizer, examples: list[dict], path: Path | None, max_length: int):
    """A ``datasets.Dataset`` of token ids with the prompt masked; DataError (file:line) if too long."""
    from datasets import Dataset

    from lora101.data import tokenize_example

    rows = []
    for ex in examples:
        encoded = tokenize_example(tokenizer, ex["messages"], ex["response"])
        if len(encoded["input_ids"]) > max_length:
            where = f"{path}:{ex['line']}" if path else f"example {ex['line']}"
            raise DataError(
                f"{where}: the example has {len(encoded['input_ids'])} tokens, longer than the context "
                f"--max-length {max_length}; shorten it or raise --max-length"
            )
        rows.append(encoded)
    return Dataset.from_list(rows)


def _builtin(args) -> tuple[list[dict], list[dict]]:
    from lora101 import data

    def conv(rows):
        return [{"messages": data.build_messages(r["sentence"]), "response": r["answer"], "line": i + 1}
                for i, r in enumerate(rows)]

    return conv(data.make_examples(args.train_size, "train", args.seed)), conv(
        data.make_examples(args.eval_size, "test", args.seed)
    )


def load_splits(args) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples from --data/--eval-data, a held-out share of --data, or the built-in task."""
    if args.data is None:
        if args.eval_data is not None:
            raise DataError("--eval-data needs --data (the built-in task has its own held-out test set)")
        return _builtin(args)
    train = read_jsonl(args.data)
    if args.eval_data is not None:
        held = read_jsonl(args.eval_data)
    else:
        if not 0 < args.eval_fraction < 1:
            raise DataError(f"--eval-fraction must be between 0 and 1, got {args.eval_fraction}")
        order = list(range(len(train)))
        random.Random(args.seed).shuffle(order)
        k = max(1, round(len(train) * args.eval_fraction))
        if len(train) - k < 1:
            raise DataError(f"{args.data}: {len(train)} example(s) are too few to hold some out; pass --eval-data")
        held = [train[i] for i in order[:k]]
        train = [train[i] for i in order[k:]]
    return train, held[: args.eval_size]


# ------------------------------------------------------------------------------------------------
# The job


def run(args) -> int:
    """Run the job; returns 0 on success, 2 on bad input (message on stderr)."""
    try:
        return _run(args)
    except (DataError, FileExistsError) as err:
        print(f"lora101 finetune: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from lora101 import finetune as ft
    from lora101.data import prompt_text
    from lora101.evaluate import evaluate_model
    from lora101.models import choose_device, load_tokenizer
    from lora101.plots import loss_curve

    out = Path(args.output)
    if ft.has_adapter(out) and not (args.resume or args.overwrite):
        raise FileExistsError(
            f"--output {out} already holds an adapter; choose another folder with --output, "
            "or pass --resume (continue that run) or --overwrite (replace it)"
        )
    if args.resume and ft.last_checkpoint(out / "checkpoints") is None:
        raise FileExistsError(f"--resume: {out / 'checkpoints'} holds no checkpoint to resume from")
    config = ft.FinetuneConfig(
        model=args.model, precision=args.precision, rank=args.rank, alpha=args.alpha, targets=args.targets,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        save_steps=min(args.save_steps, args.steps), warmup_steps=max(1, args.steps // 10), device=args.device,
        mixed_precision=args.mixed_precision,
        logging_steps=max(1, min(5, args.steps // 4)),
    )
    train_ex, eval_ex = load_splits(args)
    tokenizer = load_tokenizer(args.model)
    train_ds = tokenize_examples(tokenizer, train_ex, args.data, args.max_length)
    tokenize_examples(tokenizer, eval_ex, args.eval_data or args.data, args.max_length)  # same length check
    prompts = [prompt_text(tokenizer, ex["messages"]) for ex in eval_ex]
    refs = [ex["response"] for ex in eval_ex]
    out.mkdir(parents=True, exist_ok=True)
    device = choose_device(args.device)
    start = time.perf_counter()

    model = ft.add_lora(ft.load_base(args.model, args.precision, args.device), args.rank, args.alpha, args.targets)
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=64)  # as lesson 5: fewer, larger batches cost less
    if args.resume and (out / BEFORE).is_file():
        before = json.loads((out / BEFORE).read_text())
    else:  # B = 0: the freshly wrapped model computes exactly what the base does
        before, _ = evaluate_model(model, tokenizer, prompts, refs, desc="before", **gen)
        (out / BEFORE).write_text(json.dumps(before, indent=2))
    print(f"before: exact match {before['exact_match']:.1%} on {before['n']} held-out examples", flush=True)

    result = ft.train(model, tokenizer, train_ds, config, out / "checkpoints", resume=bool(args.resume))
    after, preds = evaluate_model(model, tokenizer, prompts, refs, desc="after", **gen)
    print(f"after:  exact match {after['exact_match']:.1%} on {after['n']} held-out examples", flush=True)
    ft.save_adapter(model, out, overwrite=True)  # guarded above: only reached when allowed
    fig = loss_curve(result.steps, result.losses, total_steps=args.steps)
    fig.savefig(out / "loss.png", dpi=80)
    report = {
        "before": before,
        "after": after,
        "examples": [{"prompt": ex["messages"][-1]["content"], "expected": r, "after": p}
                     for ex, r, p in list(zip(eval_ex, refs, preds, strict=False))[:5]],
        "train_examples": len(train_ex),
        "steps": result.global_step,
        "loss": {"steps": result.steps, "values": result.losses},
        "tokens_per_s": result.tokens_per_s,
        "train_wall_s": result.wall_s,
        "wall_s": time.perf_counter() - start,
        "peak_memory_bytes": ft.peak_memory_bytes(device),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "device": str(device),
        "config": config.to_dict(),
        "versions": installed_versions(),
        "torch_threads": torch.get_num_threads(),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}: adapter, {REPORT}, loss.png ({result.tokens_per_s:.0f} tokens/s)")
    return 0
