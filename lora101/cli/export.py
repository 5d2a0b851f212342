"""``lora101 export``: merge a trained adapter into the de-quantised 16-bit base and write a model to ship.

The adapter (a folder that ``lora101 finetune --output`` wrote) is folded into the base's NF4 weights
de-quantised back to 16 bits (the weights it was trained against), never into 4-bit weights. The result is a
transformers model folder (bf16 safetensors: ``from_pretrained``, vLLM, TGI) or one GGUF file (llama.cpp,
Ollama) in F16 or Q8_0, with the base's tokenizer and chat template. ``--output`` must be a new (or empty)
folder: nothing is overwritten.

example:
  lora101 finetune --output runs/contracts
  lora101 export runs/contracts --output shipped/contracts-bf16
  lora101 export runs/contracts --output shipped/contracts-gguf --format gguf --gguf-type q8_0
  llama-cli -m shipped/contracts-gguf/model-Q8_0.gguf   # where llama.cpp is installed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lora101.export import FORMATS, ExportError, export_adapter, gguf_file_name
from lora101.models import DEFAULT_MODEL

CLI_GGUF_TYPES = ("f16", "q8_0")


def register(subparsers) -> None:
    """Add the ``export`` command to the ``lora101`` parser."""

    p = subparsers.add_parser(
        "export",
        help="merge an adapter into the de-quantised 16-bit base; write safetensors or GGUF",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", type=Path, help="the trained adapter's folder")
    p.add_argument("--output", type=Path, required=True, help="a new folder for the merged model")
    p.add_argument("--format", default="safetensors", help=f"{' or '.join(FORMATS)} (default %(default)s)")
    p.add_argument(
        "--gguf-type",
        default="f16",
        help=f"with --format gguf: {' or '.join(CLI_GGUF_TYPES)} (default %(default)s)",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="the base the adapter was trained on (default %(default)s)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Export; 0 on success, 2 with one line on stderr for bad input."""

    try:
        if args.format == "gguf" and args.gguf_type not in CLI_GGUF_TYPES:
            raise ExportError(
                f"--gguf-type: {args.gguf_type!r} is not offered; choose {' or '.join(CLI_GGUF_TYPES)}"
            )
        out = export_adapter(
            args.adapter_dir, args.output, model=args.model, fmt=args.format, gguf_type=args.gguf_type
        )
    except ExportError as err:
        print(f"lora101 export: error: {err}", file=sys.stderr)
        return 2
    written = out / gguf_file_name(args.gguf_type) if args.format == "gguf" else out
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {written} ({size / 1e6:.1f} MB)")
    return 0
