"""LoRALinear against PEFT's lora.Linear (forward+backward) and, merged, against a plain nn.Linear (forward).

Same shapes, same weights, float32 on the chosen device. Each timing is the median of ``--repeats`` runs
after ``--warmup`` runs, the two contenders interleaved so that machine load hits both alike. Targets
(from issue 3): LoRALinear no slower than 1.15x PEFT; merged LoRALinear 1.0x nn.Linear.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import lora101  # noqa: F401  (before peft: silences bitsandbytes' CPU kernel warning)
from lora101.bench import _options
from lora101.bench.timing import median_times
from lora101.errors import OptionError
from lora101.lora import LoRALinear


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes", default="576x576,576x1536,1536x576", help="IN x OUT list (SmolLM2's layers)"
    )
    parser.add_argument("--tokens", type=int, default=1024, help="batch x sequence rows per call")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: automatic)")


def _pair(fin: int, fout: int, r: int, alpha: float, device: torch.device):
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    torch.manual_seed(0)
    ours = LoRALinear(nn.Linear(fin, fout), r=r, alpha=alpha).to(device)
    with torch.no_grad():
        ours.lora_B.normal_(std=0.02)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["x"])
    theirs = PeftLinear(copy.deepcopy(ours.base_layer), "default", config=cfg, r=r, lora_alpha=alpha).to(
        device
    )
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    return ours, theirs


def _shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise OptionError("--shapes", f"expected a list like 576x576,576x1536, got {text!r}")
    return shapes


def run(args: argparse.Namespace) -> int:
    _options.positive(args, "tokens", "r", "repeats")
    if args.warmup < 0 or args.alpha <= 0:
        raise OptionError(
            "--warmup" if args.warmup < 0 else "--alpha", "must be positive (--warmup may be 0)"
        )
    device = _options.device(args.device)
    shapes = _shapes(args.shapes)
    print(
        f"device {device}, {args.tokens} tokens, r={args.r}, alpha={args.alpha:g}, float32, "
        f"median of {args.repeats} after {args.warmup} warm-up, threads={torch.get_num_threads()}"
    )
    header = (
        f"{'in x out':>12} | {'ours fwd+bwd':>12} | {'PEFT fwd+bwd':>12} | {'ratio':>6} | "
        f"{'merged fwd':>10} | {'nn.Linear':>10} | {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    worst_train, worst_merged = 0.0, 0.0
    for fin, fout in shapes:
        ours, theirs = _pair(fin, fout, args.r, args.alpha, device)
        x = torch.randn(args.tokens, fin, device=device, requires_grad=True)
        grad = torch.randn(args.tokens, fout, device=device)

        def train_step(layer, x=x, grad=grad):
            def step():
                layer.zero_grad(set_to_none=True)
                x.grad = None
                layer(x).backward(grad)

            return step

        t_ours, t_peft = median_times(
            [train_step(ours), train_step(theirs)], args.repeats, device, warmup=args.warmup
        )
        merged = copy.deepcopy(ours)
        merged.merge()
        plain = copy.deepcopy(merged.base_layer)
        xi = x.detach()
        with torch.inference_mode():
            t_merged, t_plain = median_times(
                [lambda m=merged, v=xi: m(v), lambda p=plain, v=xi: p(v)],
                args.repeats,
                device,
                warmup=args.warmup,
            )
        ratio_train, ratio_merged = t_ours / t_peft, t_merged / t_plain
        worst_train, worst_merged = max(worst_train, ratio_train), max(worst_merged, ratio_merged)
        print(
            f"{f'{fin}x{fout}':>12} | {t_ours * 1e3:>9.3f} ms | {t_peft * 1e3:>9.3f} ms | {ratio_train:>5.2f}x | "
            f"{t_merged * 1e3:>7.3f} ms | {t_plain * 1e3:>7.3f} ms | {ratio_merged:>5.2f}x"
        )
    print(
        f"worst: LoRALinear/PEFT {worst_train:.2f}x (target <= 1.15x), "
        f"merged/nn.Linear {worst_merged:.2f}x (target 1.0x)"
    )
    return 0
