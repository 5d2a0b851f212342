"""Ship an adapter: fold it into the de-quantised 16-bit base and write a model that runs without PEFT.

Two formats, one merge:

* ``"safetensors"`` - a transformers model folder (bf16 weights, tokenizer, generation config) that
  ``AutoModelForCausalLM.from_pretrained`` loads and a GPU server (vLLM, TGI) serves;
* ``"gguf"`` - one GGUF file (llama.cpp, Ollama, LM Studio) written by :mod:`lora101.gguf_writer`, in F16
  or Q8_0 (or Q4_0, gguf's own 4-bit quantiser, which lesson 8 measures), with the base GGUF's metadata
  and tokenizer carried over.

The merge is W' = W + (alpha/r) B @ A into W = the NF4 base **de-quantised** (the weights the adapter was
trained against: :func:`lora101.finetune.merge_adapter`), never into 4-bit weights: re-quantising W' to NF4
rounds most of the small update away (lesson 8 measures it). A model folder that holds 4-bit weights is
refused with a message that says so and what to pass instead.

:func:`export_adapter` is the whole job (what ``lora101 export`` runs). Errors are :class:`ExportError`
(a ``ValueError``) whose message starts with the argument at fault: ``ADAPTER_DIR``, ``--output``,
``--model``, ``--format`` or ``--gguf-type``. Nothing is overwritten: the output is written into a temporary
folder beside it and renamed into place only when complete.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora101.finetune import merge_adapter
from lora101.gguf_writer import write_gguf
from lora101.models import BUNDLED, DEFAULT_MODEL, bundled_gguf, load_tokenizer, resolve_model

FORMATS = ("safetensors", "gguf")
GGUF_TYPES = ("f16", "q8_0", "q4_0")  # what write_gguf writes; `lora101 export` offers the first two
ADAPTER_CONFIG = "adapter_config.json"


class ExportError(ValueError):
    """A bad argument to an export; the message starts with the argument's name and says what to do."""


def export_adapter(
    adapter_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    fmt: str = "safetensors",
    gguf_type: str = "f16",
    progress: bool = True,
) -> Path:
    """Merge the adapter in ``adapter_dir`` into the de-quantised base ``model`` and write it to ``output``.

    ``fmt="safetensors"`` writes a transformers model folder (bf16); ``fmt="gguf"`` writes
    ``output/model-<TYPE>.gguf`` (``gguf_type`` in :data:`GGUF_TYPES`). ``output`` must not exist yet
    (an empty folder is accepted). Returns the folder written.
    """
    output = Path(output)
    check_request(adapter_dir, output, model=model, fmt=fmt, gguf_type=gguf_type)
    bar = tqdm(total=3, desc="export", disable=not progress)
    bar.set_postfix_str("de-quantising the base and merging")
    merged = merged_model(adapter_dir, model)
    bar.update()
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        bar.set_postfix_str(f"writing {fmt}")
        if fmt == "safetensors":
            write_safetensors(merged, model, tmp)
        else:
            write_gguf(
                merged, _source_gguf(model), tmp / gguf_file_name(gguf_type), gguf_type, progress=progress
            )
        bar.update()
        if output.exists():
            output.rmdir()  # empty (checked above); a file appearing since then makes this fail, not vanish
        tmp.rename(output)
        bar.update()
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def gguf_file_name(gguf_type: str) -> str:
    """The file name an export writes for ``gguf_type``: ``model-F16.gguf``, ``model-Q8_0.gguf``..."""
    return f"model-{gguf_type.upper()}.gguf"


def check_request(adapter_dir, output: Path, *, model: str, fmt: str, gguf_type: str) -> None:
    """Every refusal, before any work: bad format or type, a missing or foreign adapter, a 4-bit base,
    an output that exists."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not a format; choose one of {', '.join(FORMATS)}")
    if fmt == "gguf" and gguf_type not in GGUF_TYPES:
        raise ExportError(
            f"--gguf-type: {gguf_type!r} is not a type written here; choose one of {', '.join(GGUF_TYPES)}"
        )
    check_adapter(adapter_dir, model)
    refuse_4bit_base(model)
    if fmt == "gguf" and _source_gguf(model) is None:
        raise ExportError(
            f"--format gguf: {model!r} has no GGUF of its own here to take the tokenizer and metadata from "
            f"(bundled: {', '.join(BUNDLED)}); write --format safetensors and convert it with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ExportError(
            f"--output: {output} already exists and is not empty; choose a new folder (nothing is overwritten)"
        )
    if not output.parent.is_dir():
        raise ExportError(f"--output: the folder {output.parent} does not exist")


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """The base model the adapter in ``adapter_dir`` was trained on, as PEFT recorded it."""
    path = Path(adapter_dir)
    config = path / ADAPTER_CONFIG
    if not config.is_file():
        what = "does not exist" if not path.exists() else f"holds no adapter ({ADAPTER_CONFIG} is missing)"
        raise ExportError(
            f"ADAPTER_DIR: {path} {what}; pass the folder that `lora101 finetune --output` wrote"
        )
    try:
        return str(json.loads(config.read_text())["base_model_name_or_path"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ExportError(f"ADAPTER_DIR: {config} is not a PEFT adapter config ({err})") from None


def check_adapter(adapter_dir: str | os.PathLike, model: str = DEFAULT_MODEL) -> None:
    """Refuse an adapter that is missing or was trained on another base than ``model``."""
    recorded = adapter_base(adapter_dir)
    if not same_base(recorded, model):
        raise ExportError(
            f"ADAPTER_DIR: the adapter in {adapter_dir} was trained on {recorded!r}, not on {model!r}; "
            f"pass --model with the base it was trained on"
        )


def same_base(recorded: str, model: str) -> bool:
    """True when the base PEFT ``recorded`` (a hub id or a folder) is the model that ``model`` names."""
    resolved = resolve_model(model, prepare=False)
    names = {model, resolved.name, resolved.path}
    if resolved.source == "bundled":
        names.add(BUNDLED[resolved.name].hub_id)
    if recorded in names:
        return True
    mine = Path(resolved.path)
    return resolved.source != "hub" and Path(recorded).exists() and Path(recorded).resolve() == mine.resolve()


def refuse_4bit_base(model: str) -> None:
    """Refuse a base folder whose weights are stored in 4 bits: there is no 16-bit weight to merge into."""
    resolved = resolve_model(model, prepare=False)
    config = Path(resolved.path) / "config.json"
    if resolved.source != "local" or not config.is_file():
        return
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    if quant.get("load_in_4bit") or quant.get("_load_in_4bit"):
        raise ExportError(
            f"--model: {model} stores its weights in 4 bits; merging the adapter into them would re-quantise "
            "W + (alpha/r) B @ A to 4 bits and round most of the small update away. Pass the 16-bit model it "
            "was quantised from (or the bundled name): the export de-quantises the 4-bit weights the adapter "
            "was trained against and merges into that 16-bit copy"
        )


def merged_model(adapter_dir: str | os.PathLike, model: str = DEFAULT_MODEL):
    """The base's NF4 weights de-quantised to fp32 with the adapter folded in (a plain transformers model)."""
    import bitsandbytes as bnb

    merged = merge_adapter(adapter_dir, model, dtype="fp32", device="cpu")
    if any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules()):  # never merged into 4-bit weights
        raise RuntimeError("the merged model still holds 4-bit layers: this is a bug in lora101.export")
    return merged


def write_safetensors(merged, model: str, folder: Path) -> Path:
    """``merged`` in bf16 (the tied embedding stored once) with the base's tokenizer, into ``folder``."""

    copy.deepcopy(merged).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    load_tokenizer(model).save_pretrained(folder)
    return folder


def _source_gguf(model: str) -> Path | None:
    """The base's own GGUF (its tokenizer and metadata are carried over), or None for a non-bundled base."""
    key = str(model).lower()
    return bundled_gguf(key) if key in BUNDLED else None
