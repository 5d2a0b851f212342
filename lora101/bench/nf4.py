"""lora101.nf4 against bitsandbytes: quantise/dequantise time, then reconstruction error NF4 vs FP4 vs int4.

Timing: one ``--size`` x ``--size`` matrix (default 4096 x 4096, 16.8 M weights) in each of ``--dtypes``
(default float32), NF4, blocksize 64, with and without double quantisation; median of ``--repeats`` runs
after a warm-up, ours and bitsandbytes' interleaved so machine load hits both alike. Target (issue 15): no
slower than bitsandbytes on the CPU ("worst ratio" <= 1.0x). Before timing, each pair is checked to be
bit-identical.

Bandwidth: each operation's bytes read + written (codes, block constants, weights) divided by its time, next
to the machine's copy bandwidth (a ``clone()`` of the same matrix: read + write once). De-quantisation is
memory-bound work: the fraction says how far from the physical limit a kernel is.

Error: RMSE and max |error| of the round trip for Gaussian data and for real SmolLM2 weights (a few layers
of each type), blocksize 64.
"""

from __future__ import annotations

import argparse

import torch
from safetensors import safe_open

import lora101  # noqa: F401  (before bitsandbytes: silences its CPU kernel warning)
from lora101 import nf4
from lora101.bench import _options
from lora101.bench.timing import median_times
from lora101.errors import OptionError
from lora101.models import prepare_model

SMOLLM2_LAYERS = 30  # decoder blocks of SmolLM2-135M, the model whose weights the error table reads
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=4096, help="the timed matrix is SIZE x SIZE (float32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--dtypes",
        default="float32",
        help="comma-separated weight (and de-quantised output) dtypes: float32, bfloat16, float16",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--layers", default="0,14,29", help="SmolLM2 layer indices for the error table")
    parser.add_argument("--no-errors", action="store_true", help="skip the reconstruction-error table")


def smollm2_weights(layers: list[int]) -> dict[str, torch.Tensor]:
    """{parameter name: float32 weight} for the attention and MLP projections of the given layers."""
    path = prepare_model(quiet=True) / "model.safetensors"
    out = {}
    with safe_open(str(path), "pt") as f:
        for i in layers:
            for t in LAYER_TYPES:
                group = "self_attn" if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
                out[f"model.layers.{i}.{group}.{t}.weight"] = f.get_tensor(
                    f"model.layers.{i}.{group}.{t}.weight"
                ).float()
    return out


def error_table(weights: dict[str, torch.Tensor], blocksize: int = 64) -> list[tuple[str, str, float, float]]:
    """[(what, code type, RMSE, max |error|)], pooled over the tensors in each group of ``weights``."""
    rows = []
    for what, group in weights.items():
        for code_type in nf4.CODE_TYPES:
            sq, count, worst = 0.0, 0, 0.0
            for w in group:
                w_hat = nf4.dequantize_4bit(nf4.quantize_4bit(w, code_type, blocksize)).float()
                diff = w_hat - w.float()
                sq += float(diff.double().square().sum())
                count += diff.numel()
                worst = max(worst, float(diff.abs().max()))
            rows.append((what, code_type, (sq / count) ** 0.5, worst))
    return rows


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def state_bytes(state: nf4.QuantState) -> int:
    """Bytes of a 4-bit state as a kernel reads or writes them: packed codes and every block constant."""
    return state.nbytes()


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def _parse_dtypes(text: str) -> list[str]:
    dtypes = [d.strip() for d in text.split(",")]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise OptionError("--dtypes", f"unknown dtype(s) {unknown}; choose from {list(DTYPES)}")
    return dtypes


def _copy_bandwidth(w32: torch.Tensor, repeats: int, device: torch.device) -> float:
    """GB/s of a ``clone()``: it reads and writes every byte once, the yardstick for memory-bound work."""
    (t_copy,) = median_times([lambda: w32.clone()], repeats, device)
    copy_gbps = _gbps(2 * w32.numel() * w32.element_size(), t_copy)
    print(
        f"copy bandwidth: clone() of the float32 matrix, {2 * w32.numel() * 4 / 1e6:.0f} MB read + written "
        f"in {t_copy * 1e3:.1f} ms = {copy_gbps:.1f} GB/s"
    )
    return copy_gbps


def _time_pair(
    w: torch.Tensor, dq: bool, repeats: int, device: torch.device
) -> tuple[nf4.QuantState, list, list]:
    """(our state, [our, their] quantise seconds, [our, their] de-quantise seconds), bit-identity checked first."""
    import bitsandbytes.functional as BF

    ours_state = nf4.quantize_nf4(w, 64, dq)
    packed, state = BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
    if not (
        torch.equal(ours_state.packed, packed.reshape(-1)) and torch.equal(ours_state.absmax, state.absmax)
    ):
        raise SystemExit("lora101.nf4 and bitsandbytes disagree on this matrix: not timing")
    if not torch.equal(nf4.dequantize_nf4(ours_state), BF.dequantize_4bit(packed, state)):
        raise SystemExit("dequantised tensors disagree: not timing")
    t_q = median_times(
        [
            lambda: nf4.quantize_nf4(w, 64, dq),
            lambda: BF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq),
        ],
        repeats,
        device,
    )
    t_d = median_times(
        [lambda: nf4.dequantize_nf4(ours_state), lambda: BF.dequantize_4bit(packed, state)], repeats, device
    )
    return ours_state, t_q, t_d


def _timing_table(args: argparse.Namespace, dtypes: list[str], device: torch.device) -> None:
    torch.manual_seed(0)
    w32 = torch.randn(args.size, args.size, device=device) * 0.02
    print(
        f"{args.size}x{args.size} on {device}, NF4 blocksize 64, median of {args.repeats}, "
        f"threads={torch.get_num_threads()}"
    )
    copy_gbps = _copy_bandwidth(w32, args.repeats, device)
    header = (
        f"{'operation':<36} | {'lora101':>10} | {'bitsandbytes':>12} | {'ratio':>6} | "
        f"{'MB moved':>8} | {'lora101 GB/s (of copy)':>22} | {'bnb GB/s (of copy)':>18}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for dtype_name in dtypes:
        w = w32.to(DTYPES[dtype_name])
        for dq in (False, True):
            ours_state, t_q, t_d = _time_pair(w, dq, args.repeats, device)
            # Both directions move the same bytes: the weights one way, the 4-bit state the other.
            moved = w.numel() * w.element_size() + state_bytes(ours_state)
            label = f"{dtype_name}, {'double quant' if dq else 'plain'}"
            for name, (ours, theirs) in ((f"quantise ({label})", t_q), (f"dequantise ({label})", t_d)):
                worst = max(worst, ours / theirs)
                print(
                    f"{name:<36} | {ours * 1e3:>7.1f} ms | {theirs * 1e3:>9.1f} ms | {ours / theirs:>5.2f}x | "
                    f"{moved / 1e6:>8.1f} | {_gbps(moved, ours):>8.2f} ({_gbps(moved, ours) / copy_gbps:>6.1%})"
                    f"       | {_gbps(moved, theirs):>6.2f} ({_gbps(moved, theirs) / copy_gbps:>6.1%})"
                )
    print(f"worst ratio {worst:.2f}x (target <= 1.0x); bit-identical results checked before timing")


def _print_error_table(args: argparse.Namespace) -> None:
    print("\nreconstruction error, blocksize 64 (RMSE / max |error|, same units as the weights)")
    torch.manual_seed(1)
    layers = [int(v) for v in args.layers.split(",")]
    real = smollm2_weights(layers)
    groups: dict[str, list[torch.Tensor]] = {
        "gaussian N(0, 0.02^2), 1024x1024": [torch.randn(1024, 1024) * 0.02]
    }
    for t in LAYER_TYPES:
        groups[f"SmolLM2 {t} (layers {args.layers})"] = [v for k, v in real.items() if f".{t}." in k]
    header = f"{'weights':<40} | {'code':<5} | {'RMSE':>10} | {'max |err|':>10}"
    print(header)
    print("-" * len(header))
    for what, code_type, rmse, worst_err in error_table(groups):
        print(f"{what:<40} | {code_type:<5} | {rmse:>10.3e} | {worst_err:>10.3e}")


def run(args: argparse.Namespace) -> int:
    dtypes = _parse_dtypes(args.dtypes)
    _options.positive(args, "repeats")
    if args.size < 8 or args.size % 8:  # NF4 quantises blocks of 64 values: the matrix holds whole blocks
        raise OptionError("--size", f"must be a positive multiple of 8 (whole blocks of 64), got {args.size}")
    _options.integers(args.layers, "--layers", 0, SMOLLM2_LAYERS - 1)
    _timing_table(args, dtypes, _options.device(args.device))
    if not args.no_errors:
        _print_error_table(args)
    return 0
