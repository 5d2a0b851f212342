"""Full fine-tuning vs 16-bit LoRA vs QLoRA at scale: peak memory and tokens/s, beside lesson 1's prediction.

The models are Llama-shaped with random weights (speed and memory do not need trained ones): ``1.1b`` has
TinyLlama-1.1B's shapes (1.10B parameters; full fine-tuning fits a 24 GB CPU machine), ``1b`` Llama-3.2-1B's
(1.24B), ``8b`` Llama-3.1-8B's (8.03B), ``tiny`` is for tests. The seed is fixed, so a re-run builds the same
weights and trains on the same tokens. Each (size, method) runs in a fresh process
(lora101.fresh_process), so that its peak memory is its own: on CUDA ``torch.cuda.max_memory_allocated``,
on a CPU the process's peak resident set (VmHWM), both reset once the model is built, so that they count the
training step and not the construction. The base is built layer by layer (QLoRA's linear layers are quantised
to NF4 one at a time) so that building never needs the whole 16-bit model at once.

* ``full``  - every weight trained with AdamW, in bf16 where the device computes in bf16 natively
  (Ampere+ GPUs), in fp32 elsewhere (CPUs, T4, V100);
* ``lora``  - the same base frozen in that dtype, LoRA r=16 (alpha 32) on every linear layer of the decoder;
* ``qlora`` - the decoder's linear layers in 4-bit NF4 with double quantisation (bitsandbytes), the same
  adapters. Embeddings, norms and the output layer stay in the base dtype (not widened to fp32).

Each run does one untimed warm-up step, then ``--steps`` timed steps of ``--batch-size`` x ``--seq-len``
random tokens (the loss over every position, as pre-training-style fine-tuning computes it), with
activation checkpointing unless ``--no-checkpointing``, under bf16 autocast where the device has native bf16.
Lesson 1's ``lora101.memory.estimate_memory`` predicts the same configuration; the table prints both.

Examples:
  lora101 bench scale --sizes 1.1b --seq-len 256 --steps 1 --output lessons/results/memory_at_scale.json
      # a CPU: under 19 GB (17.6 GiB peak), about 9 minutes on two slow cores
  lora101 bench scale --sizes 1b,8b --seq-len 2048 --batch-size 2 --output gpu.json # a GPU (8b needs ~40 GB)
"""

from __future__ import annotations

# transformers, peft and bitsandbytes are imported where a measurement needs them: lessons import this module for
# its stored results (load_stored), which need none of them.
import argparse
import json
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from lora101 import fresh_process
from lora101.bench import _options
from lora101.colab import stored_results
from lora101.doctor import installed_versions
from lora101.errors import OptionError
from lora101.finetune import enable_checkpointing
from lora101.memory import ModelShape, estimate_memory, peak_memory_bytes
from lora101.models import choose_device, has_native_bf16
from lora101.sweep import check_output_path, machine_info

METHODS = ("full", "lora", "qlora")
# LlamaConfig fields (rope and the rest at transformers' defaults)
SIZES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        tie_word_embeddings=True,
    ),
    # TinyLlama-1.1B's shapes: over 1B parameters, and full fine-tuning in fp32 with AdamW (16 bytes a
    # parameter, ~17.6 GB) still fits a 24 GB CPU machine, which Llama-3.2-1B's (~20 GB + its 128k vocab) does not
    "1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
}
RANK = 16
SEED = 0  # the random weights and tokens: a re-run builds the same model and sees the same batches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="1.1b", help=f"comma-separated subset of {', '.join(SIZES)} (default %(default)s)"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS)
    )
    parser.add_argument(
        "--steps", type=int, default=2, help="timed optimizer steps per run (default %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per step (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default %(default)s)")
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="keep every activation (default: recompute)"
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda (default: LORA101_DEVICE, else the best there is)"
    )
    parser.add_argument("--output", help="results file to write (.json); never replaced without --force")
    parser.add_argument("--force", action="store_true", help="replace an existing results file")


def _choices(text: str, allowed, option: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown or not chosen:
        raise OptionError(option, f"{unknown or text!r} not among {', '.join(allowed)}")
    return chosen


def _reset_peak(device) -> None:
    """Start the peak-memory count from what is allocated now (the built model)."""

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets VmHWM to the current resident set
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def _build(size: str, method: str, device, dtype, seq_len: int, checkpointing: bool):
    """The model for ``method``: built on the meta device, then materialised one module at a time."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SIZES[size], max_position_embeddings=max(seq_len, 128))
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    linear = {name for name, m in model.model.layers.named_modules() if isinstance(m, nn.Linear)}
    for name in sorted(linear):
        parent_name, _, child = name.rpartition(".")
        parent = model.model.layers.get_submodule(parent_name)
        old = getattr(parent, child)
        weight = torch.randn(old.out_features, old.in_features, dtype=dtype, device=device) * 0.02
        setattr(parent, child, _linear(weight, quantise=method == "qlora", dtype=dtype))
    for module in model.modules():  # embeddings, norms, the output layer: what is still on the meta device
        for pname, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                data = torch.empty(param.shape, dtype=dtype, device=device)
                data.normal_(0, 0.02) if param.dim() > 1 else data.fill_(1.0)
                setattr(module, pname, nn.Parameter(data, requires_grad=method == "full"))
    model.tie_weights()
    # the rotary frequencies are a computed buffer, not a weight: build that module anew, off the meta device
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model.config.use_cache = False
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        model = get_peft_model(
            model,
            LoraConfig(
                r=RANK,
                lora_alpha=2 * RANK,
                target_modules="all-linear",
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
            ),
        )
    if checkpointing:
        enable_checkpointing(model.get_base_model() if method != "full" else model)
    return model.to(device), config


def _linear(weight, *, quantise: bool, dtype):
    """A bias-free linear layer holding ``weight``: plain, or bitsandbytes' NF4 + double quantisation."""

    out_features, in_features = weight.shape
    if not quantise:
        layer = nn.Linear(in_features, out_features, bias=False, device="meta")
        layer.weight = nn.Parameter(weight, requires_grad=False)
        return layer
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(
        in_features,
        out_features,
        bias=False,
        compute_dtype=dtype,
        quant_type="nf4",
        compress_statistics=True,
        device="meta",
    )
    params = bnb.nn.Params4bit(
        weight.to("cpu") if weight.device.type == "cpu" else weight,
        requires_grad=False,
        quant_type="nf4",
        compress_statistics=True,
    )
    layer.weight = params.to(weight.device)  # quantised here, on its device
    del weight
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return layer


def _resident_bytes() -> int:
    """This process's resident memory now (VmRSS), in bytes; 0 where unavailable (not Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return 0


def _train_steps(model, optimizer, spec: dict, config, device, native: bool) -> tuple[float, float]:
    """One untimed warm-up step (it allocates the optimizer states), then ``steps`` timed ones: (loss, seconds)."""

    batch, seq = spec["batch_size"], spec["seq_len"]
    generator = torch.Generator().manual_seed(SEED)

    def step():
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=native):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    model.train()
    loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss, time.perf_counter() - start


def measure(spec: dict) -> dict:
    """One (size, method) row, measured in this process (``run`` starts a fresh one for each: see the docstring)."""
    device = choose_device(spec["device"])
    native = has_native_bf16(device)
    dtype = torch.bfloat16 if native else torch.float32
    # the interpreter and its libraries: counted by a CPU's peak RSS, not by lesson 1's prediction
    process = _resident_bytes() if device.type == "cpu" else 0
    torch.manual_seed(SEED)
    model, config = _build(
        spec["size"], spec["method"], device, dtype, spec["seq_len"], spec["checkpointing"]
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    _reset_peak(device)
    at_start = peak_memory_bytes(
        device
    )  # the built model (and, on a CPU, the process: Python, torch, libraries)
    loss, wall = _train_steps(model, optimizer, spec, config, device, native)
    measured = {
        "trainable_parameters": sum(p.numel() for p in trainable),
        "peak_bytes": peak_memory_bytes(device),
        "bytes_after_build": at_start,
        "process_bytes": process,
        "tokens_per_s": spec["steps"] * spec["batch_size"] * spec["seq_len"] / wall,
        "wall_s": wall,
        "last_loss": loss,
    }
    return _result(spec, config, native, measured, device, dtype)


def _result(spec: dict, config, native: bool, measured: dict, device, dtype) -> dict:
    """One run's row: what was measured beside lesson 1's prediction for the same configuration."""

    predicted = estimate_memory(
        config,
        spec["method"],
        precision="bf16" if native else "fp32",
        optimizer="adamw",
        # torch's AdamW keeps its moments in the trained weights' dtype: bf16 on a GPU, fp32 on a CPU
        optimizer_state_dtype="param",
        r=RANK,
        target_modules="all-linear",
        batch_size=spec["batch_size"],
        seq_len=spec["seq_len"],
        gradient_checkpointing=spec["checkpointing"],
    )
    return {
        "size": spec["size"],
        "method": spec["method"],
        "parameters": ModelShape.from_config(config).n_params,
        **measured,
        "predicted_bytes": predicted.total,
        "predicted": predicted.as_dict(),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)",
        "threads": torch.get_num_threads(),
    }


def _check_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    sizes = _choices(args.sizes, SIZES, "--sizes")
    methods = _choices(args.methods, METHODS, "--methods")
    _options.positive(args, "steps", "batch_size", "seq_len")
    _options.device(args.device)  # the workers choose it again: refuse a bad one before starting them
    return sizes, methods


def run(args: argparse.Namespace) -> int:
    sizes, methods = _check_options(args)
    output = None
    if args.output:
        output = check_output_path(args.output, args.force)
    rows = []
    bar = tqdm([(size, method) for size in sizes for method in methods], desc="bench scale", unit="run")
    for size, method in bar:
        bar.set_postfix_str(f"{size}/{method}")  # a 1B run takes minutes on a CPU: say which one is running
        spec = dict(
            size=size,
            method=method,
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            checkpointing=not args.no_checkpointing,
            device=args.device,
        )
        rows.append(
            fresh_process.run("lora101.bench.scale:measure", spec, label=f"bench scale {size}/{method}")
        )
    print(table(rows))
    if output is not None:
        output.write_text(json.dumps(results_document(args, rows), indent=2) + "\n")
        print(f"wrote {output}")
    return 0


def results_document(args: argparse.Namespace, rows: list[dict]) -> dict:
    """What the results file holds: the command, machine, versions, settings, runs and what to read from them."""

    options = sys.argv[sys.argv.index("scale") + 1 :] if "scale" in sys.argv else []
    return {
        "command": " ".join(["lora101 bench scale", *options]),
        "machine": machine_info(),
        "versions": installed_versions(),
        "settings": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "checkpointing": not args.no_checkpointing,
            "rank": RANK,
            "optimizer": "AdamW",
            "seed": SEED,
        },
        "runs": rows,
        "notes": notes(rows),
    }


def notes(rows: list[dict]) -> list[str]:
    """Plain sentences on the runs: QLoRA against LoRA, and what a CPU's peak RSS counts that the prediction does not."""
    found = []
    by_size = {(r["size"], r["method"]): r for r in rows}
    for size in dict.fromkeys(r["size"] for r in rows):
        lora, qlora = by_size.get((size, "lora")), by_size.get((size, "qlora"))
        if lora and qlora:
            ratio = qlora["peak_bytes"] / lora["peak_bytes"]
            verdict = "well under" if ratio < 0.75 else "not well under"
            found.append(f"{size}: QLoRA's peak is {ratio:.2f}x LoRA's ({verdict} it).")
    cpu = [r for r in rows if r.get("process_bytes")]
    if cpu:
        process = max(r["process_bytes"] for r in cpu) / 2**30
        found.append(
            f"peak RSS counts the whole process: Python, torch and the other libraries took up to {process:.2f} GiB "
            "before the model was built (process_bytes), which lesson 1's prediction does not include; the "
            "allocator may also keep freed memory, so a CPU peak is an upper bound on what training needed."
        )
    return found


def table(rows: list[dict]) -> str:
    """Peak and predicted memory, tokens/s, and the ratios to LoRA of the same size."""
    header = (
        f"{'size':<5} {'method':<6} {'params':>7} {'trainable':>10} {'peak GiB':>9} {'predicted':>10} "
        f"{'tokens/s':>9} {'vs LoRA mem':>11}"
    )
    lines = [header]
    lora = {r["size"]: r for r in rows if r["method"] == "lora"}
    for r in rows:
        ratio = f"{r['peak_bytes'] / lora[r['size']]['peak_bytes']:.2f}x" if r["size"] in lora else ""
        lines.append(
            f"{r['size']:<5} {r['method']:<6} {r['parameters'] / 1e9:>6.2f}B "
            f"{r['trainable_parameters'] / 1e6:>9.1f}M {r['peak_bytes'] / 2**30:>9.2f} "
            f"{r['predicted_bytes'] / 2**30:>10.2f} {r['tokens_per_s']:>9.1f} {ratio:>11}"
        )
    if rows:
        lines.append(
            f"device {rows[0]['device']} ({rows[0]['dtype']}); memory = {rows[0]['memory_kind']}; "
            "predicted = lesson 1's estimate_memory for the same shapes and settings"
        )
    return "\n".join(lines)


def load_stored(name: str = "memory_at_scale.json") -> dict:
    """A stored results file of the course: from lessons/results/ when the lesson runs from lessons/ or the
    repository root; on Colab, where only the notebook is on disk, downloaded from the course's repository."""

    return json.loads(
        stored_results(name, f"lora101 bench scale --output lessons/results/{name}").read_text()
    )
