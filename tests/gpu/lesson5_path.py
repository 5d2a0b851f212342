"""Lesson 5's code path on one device, as a script: the GPU check's step that tests/integration/test_finetune.py cannot be
(its device is fixed to the CPU).

    python tests/gpu/lesson5_path.py build-model SOURCE OUT [--tiny]
        a random-weight model of SOURCE's shape (SOURCE: a folder with config.json and the tokenizer, e.g. the
        bundled SmolLM2-135M-Instruct's), saved with that tokenizer into OUT; --tiny: two layers of width 64
    python tests/gpu/lesson5_path.py run MODEL --device cuda --json OUT.json [--steps N] [--batch-size B]
        the 4-bit load and prepare_model_for_kbit_training, training (bf16 autocast where the device has it),
        the adapter saved and reloaded (identical logits), merged into the de-quantised base (within 1e-4 of
        the largest logit, lesson 5's tolerance); each check is written to OUT.json; exit 1 if one fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)


def build_model(source: Path, out: Path, tiny: bool) -> None:
    """Random weights (seed 0) of ``source``'s config, saved in bf16 with ``source``'s tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    if tiny:
        config.update(
            dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
            )
        )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"random-weight {config.model_type} of {n / 1e6:.1f}M parameters written to {out}")


def _check(checks: list[dict], name: str, passed: bool, **values) -> None:
    checks.append({"check": name, "passed": bool(passed), **values})
    print(f"{'PASS' if passed else 'FAIL'} {name} {json.dumps(values)}", flush=True)


def _logits(model, probe):
    import torch

    with torch.no_grad():
        return model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits.float()


def _predicted_bytes(config, device, batch: int, seq_len: int) -> float:
    """Lesson 1's prediction for this run (the weights left in 16-bit are fp32 after prepare_model_for_kbit_training)."""
    from lora101.memory import BYTES, ModelShape, estimate_memory
    from lora101.models import has_native_bf16

    cuda, precision = device.type == "cuda", "bf16" if has_native_bf16(device) else "fp32"
    shape = ModelShape.from_config(config)
    budget = estimate_memory(
        shape,
        "qlora",
        precision=precision,
        optimizer="adamw-8bit" if cuda else "adamw",
        r=16,
        target_modules="all-linear",
        batch_size=batch,
        seq_len=seq_len,
        gradient_checkpointing=cuda,
    )
    return budget.total + (shape.n_params - shape.linear_params) * (4 - BYTES[precision])


def _load_and_train(model_dir: str, device, steps: int, batch: int, work: Path, checks: list[dict]):
    import bitsandbytes as bnb
    import torch

    from lora101 import finetune as ft
    from lora101.models import has_native_bf16, load_tokenizer
    from lora101.tasks.contracts import build_dataset

    tokenizer = load_tokenizer(model_dir)
    data = build_dataset(tokenizer, n_train=steps * batch, n_test=8)
    base = ft.load_base(model_dir, precision="nf4", device=str(device))
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    on = {m.weight.device.type for m in layers}
    _check(checks, "4-bit load", bool(layers) and on == {device.type}, layers=len(layers), on=sorted(on))
    dtypes = sorted({str(p.dtype) for p in base.parameters() if p.dtype != torch.uint8})
    frozen = not any(p.requires_grad for p in base.parameters())
    _check(checks, "prepare_model_for_kbit_training", frozen and dtypes == ["torch.float32"], dtypes=dtypes)
    config = ft.FinetuneConfig(
        model=model_dir,
        steps=steps,
        batch_size=batch,
        warmup_steps=max(1, steps // 10),
        save_steps=steps,
        logging_steps=1,
        device=str(device),
    )
    model = ft.add_lora(base, config.rank, config.alpha)
    args = ft.training_arguments(config, work / "checkpoints", progress=False)
    native = has_native_bf16(device)  # compute capability 8.0+: the Trainer must autocast to bf16 there
    _check(checks, "bf16 autocast where native", args.bf16 == native, bf16=args.bf16, native_bf16=native)
    tf32 = {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = ft.train(model, tokenizer, data["train"], config, work / "checkpoints", progress=False)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    predicted = _predicted_bytes(base.config, device, batch, max(len(x) for x in data["train"]["input_ids"]))
    first, last = result.losses[0], min(result.losses[-3:])
    _check(
        checks,
        "training lowers the loss",
        last < first,
        first=first,
        last=last,
        steps=result.global_step,
        tokens_per_s=result.tokens_per_s,
        peak_bytes=peak,
        predicted_bytes=predicted,
        tf32_settings=tf32,
    )
    return model, tokenizer, data


def run(model_dir: str, device_name: str, steps: int, batch: int, out: Path) -> int:
    import torch
    from peft import PeftModel

    import lora101  # noqa: F401  (quietens bitsandbytes before it is imported)
    from lora101 import finetune as ft
    from lora101.doctor import installed_versions
    from lora101.models import choose_device

    device = choose_device(device_name)
    checks: list[dict] = []
    report = {"model": model_dir, "device": str(device), "versions": installed_versions(), "checks": checks}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, tokenizer, data = _load_and_train(model_dir, device, steps, batch, work, checks)
        rows = [{k: data["test"][i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(8)]
        probe = {k: v.to(device) for k, v in ft.collator(tokenizer)(rows).items()}
        trained = _logits(model, probe)
        adapter = ft.save_adapter(model, work / "adapter")
        reloaded = ft.load_adapter(adapter, model_dir, precision="nf4", device=str(device))
        same = torch.equal(trained, _logits(reloaded, probe))
        gap = float((trained - _logits(reloaded, probe)).abs().max())
        _check(checks, "reloaded adapter: identical logits", same, max_gap=gap)
        del reloaded
        at_answer = ft.next_token_labels(probe["labels"]) != -100
        merged = ft.merge_adapter(adapter, model_dir, dtype="fp32", device=str(device))
        unmerged = PeftModel.from_pretrained(ft.dequantized_base(model_dir, device), str(adapter)).eval()
        reference = _logits(unmerged, probe)[at_answer]
        scale = float(reference.abs().max())
        gap = float((_logits(merged, probe)[at_answer] - reference).abs().max())
        _check(checks, "merge within 1e-4 of the largest logit", gap <= 1e-4 * scale, gap=gap, scale=scale)
        four_bit = trained[at_answer]
        agree = float((four_bit.argmax(-1) == reference.argmax(-1)).float().mean())
        report["four_bit_vs_dequantized"] = {
            "max_gap": float((four_bit - reference).abs().max()),
            "same_next_token": agree,
        }
    report["wall_s"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [c["check"] for c in checks if not c["passed"]]
    print(
        f"{len(checks) - len(failed)} of {len(checks)} checks passed"
        + (f"; failed: {failed}" if failed else "")
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-model")
    build.add_argument("source", type=Path)
    build.add_argument("out", type=Path)
    build.add_argument("--tiny", action="store_true")
    go = sub.add_parser("run")
    go.add_argument("model")
    go.add_argument("--device", default="cuda")
    go.add_argument("--steps", type=int, default=30)
    go.add_argument("--batch-size", type=int, default=8)
    go.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "build-model":
        if not (args.source / "config.json").is_file():
            parser.error(f"source: {args.source} has no config.json")
        build_model(args.source, args.out, args.tiny)
        return 0
    return run(args.model, args.device, args.steps, args.batch_size, args.json)


if __name__ == "__main__":
    sys.exit(main())
