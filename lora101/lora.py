"""LoRA from scratch: a frozen linear layer plus a trainable low-rank update, and tools to put it in a model.

Shape convention (PEFT's, and the paper's on column vectors): a linear layer maps ``x`` of shape
``(..., in_features)`` to ``(..., out_features)`` with a weight ``W`` of shape ``(out_features, in_features)``.
LoRA adds ``delta_W = scaling * B @ A`` with

* ``A`` (``lora_A``) of shape ``(r, in_features)``: maps the input down to ``r`` numbers;
* ``B`` (``lora_B``) of shape ``(out_features, r)``: maps those ``r`` numbers up to the output;
* ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA).

so ``h = W x + scaling * B (A x)``. ``A`` starts like ``nn.Linear``'s weight (Kaiming uniform), ``B`` at
zero, so a fresh adapter changes nothing. Only ``A`` and ``B`` train.

Public API:

* :class:`LoRALinear` -- the layer (merge/unmerge, a ``merged`` flag);
* :func:`inject_lora` -- wrap a model's matching linear layers in place (PEFT's target-name rule);
* :func:`count_parameters`, :func:`lora_state_dict`, :func:`load_lora_state_dict`, :func:`merge_lora`;
* :func:`save_peft_adapter` -- write PEFT's on-disk format, loadable by ``peft.PeftModel.from_pretrained``;
  :func:`load_peft_adapter` -- the reverse: a folder PEFT saved, into this module's layers;
* :func:`disable_adapter` -- a context manager: the model computes as its base alone inside it
  (``LoRALinear.disable_adapter()`` does the same for one layer).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "LoRALinear",
    "ParameterCount",
    "inject_lora",
    "count_parameters",
    "lora_state_dict",
    "load_lora_state_dict",
    "merge_lora",
    "lora_layers",
    "peft_target_modules",
    "save_peft_adapter",
    "load_peft_adapter",
    "disable_adapter",
]


def _features(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module, or a TypeError saying what is missing."""
    if not isinstance(base, nn.Module):
        raise TypeError(f"base must be an nn.Linear (or a linear-like nn.Module), got {type(base).__name__}")
    fin, fout = getattr(base, "in_features", None), getattr(base, "out_features", None)
    if (
        not (isinstance(fin, int) and isinstance(fout, int))
        or isinstance(fin, bool)
        or isinstance(fout, bool)
    ):
        raise TypeError(
            f"base must be an nn.Linear or a module with integer in_features and out_features; "
            f"{type(base).__name__} has neither. LoRA here adapts linear layers only."
        )
    return fin, fout


def _check_hyper(r: int, alpha: float, dropout: float, fin: int, fout: int) -> None:
    """Validate LoRA settings for a layer of shape (fout, fin); raise naming the argument and the fix."""
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"r must be an int (the rank of the update), got {type(r).__name__} {r!r}")
    limit = min(fin, fout)
    if r < 1:
        raise ValueError(f"r must be between 1 and {limit} for a {fout}x{fin} layer, got {r}")
    if r > limit:
        raise ValueError(
            f"r must be between 1 and {limit} for a {fout}x{fin} layer, got {r}: B @ A cannot have rank above "
            f"min(in_features, out_features) = {limit}, so a larger r only adds parameters. Use r <= {limit}."
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    if not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(
            f"alpha must be a positive number (scaling = alpha / r), got {alpha}; try alpha = 2 * r"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (the probability of zeroing an input), got {dropout}")


def _mergeable_weight(base: nn.Module) -> torch.Tensor | None:
    """The base's plain floating-point (out, in) weight, or None if it has none (e.g. a 4-bit layer)."""
    weight = getattr(base, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        return None
    # bitsandbytes packs 4-bit weights into a float-typed storage too
    if type(weight).__name__ == "Params4bit":
        return None
    if tuple(weight.shape) != (base.out_features, base.in_features):
        return None
    return weight


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``y = base(x) + scaling * B(A(dropout(x)))``.

    Args:
        base: the layer to adapt, frozen here. An ``nn.Linear``, or any ``nn.Module`` with integer
            ``in_features`` and ``out_features`` whose forward computes the base output itself (a frozen
            quantised layer such as ``lora101.nf4.NF4Linear`` or bitsandbytes' ``Linear4bit``).
        r: the rank, ``1 <= r <= min(in_features, out_features)``.
        alpha: positive; the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` if ``use_rslora``).
        dropout: probability in ``[0, 1)`` of zeroing an element of the adapter's input (training only);
            with 0 no dropout op runs at all.

    Shapes: ``x`` is ``(..., in_features)``, the output ``(..., out_features)``; ``lora_A`` is
    ``(r, in_features)``, ``lora_B`` is ``(out_features, r)``, both float32 (the trainable "master" copy,
    as PEFT keeps them); the adapter path runs in float32 and its result is cast to the base's output dtype.

    Merging: ``merge()`` adds ``delta_weight()`` into the base weight so the forward is the plain base layer
    (zero overhead); ``unmerge()`` subtracts it again. Both compute in float32, so for a float32 base the
    round trip restores the weight to float rounding (about 1e-7 relative); a bf16/fp16 base rounds to its
    own precision. A base that is not a plain floating-point linear layer (a quantised one) cannot be merged
    into: ``merge()`` raises ``TypeError`` ("dequantise first"). An update holding NaN or inf is refused
    (``ValueError``, nothing changed), as PEFT 0.21's ``merge(safe_merge=True)`` does (its default,
    ``safe_merge=False``, merges silently): merged in, it could never be subtracted out again, and
    ``unmerge()`` could not restore the base.

    ``with layer.disable_adapter(): ...`` computes the base layer alone inside the block (unmerging first if
    merged, merging again on the way out).
    """

    def __init__(
        self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, *, use_rslora: bool = False
    ) -> None:
        super().__init__()
        fin, fout = _features(base)
        _check_hyper(r, alpha, dropout, fin, fout)
        if isinstance(base, LoRALinear):
            raise ValueError("base is already a LoRALinear: adapting it twice would stack two adapters")
        self.base_layer = base
        self.in_features, self.out_features = fin, fout
        self.r, self.alpha, self.use_rslora = r, float(alpha), bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(r) if use_rslora else r)
        self.dropout_p = float(dropout)
        # nn.Identity when p == 0: no op at all on the hot path (PEFT does the same).
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in base.parameters():
            p.requires_grad_(False)
        device = next(iter(list(base.parameters()) + list(base.buffers())), torch.empty(0)).device
        self.lora_A = nn.Parameter(torch.empty(r, fin, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(fout, r, device=device, dtype=torch.float32))
        self.merged = False
        self.disabled = False  # True inside disable_adapter(): the forward is the base layer alone
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A like ``nn.Linear``'s default weight init (Kaiming uniform, a=sqrt(5)), B zero: the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A``, float32, shape ``(out_features, in_features)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) -> (..., out_features)."""
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        a = self.lora_A
        h = self.lora_dropout(x if x.dtype == a.dtype else x.to(a.dtype))
        # Scale the r-wide intermediate rather than the out-wide result: the same product, fewer multiplies.
        update = F.linear(F.linear(h, a) * self.scaling, self.lora_B)
        return result + (update if update.dtype == result.dtype else update.to(result.dtype))

    def _merge_target(self) -> torch.Tensor:
        weight = _mergeable_weight(self.base_layer)
        if weight is None:
            raise TypeError(
                f"cannot merge into a {type(self.base_layer).__name__}: its weight is not a plain floating-point "
                f"({self.out_features}, {self.in_features}) matrix (a quantised layer?). Dequantise first: wrap an "
                "nn.Linear holding the dequantised weight."
            )
        return weight

    @torch.no_grad()
    def _fold(self, sign: int) -> None:
        """Add (``sign`` 1) or subtract (-1) the update to the base weight, computing in float32; refuse (and
        change nothing) if the update or the result is not finite."""
        weight = self._merge_target()
        delta = self.delta_weight().to(weight.device)
        if not bool(torch.isfinite(delta).all()):
            bad = int((~torch.isfinite(delta)).sum())
            raise ValueError(
                f"the adapter is broken: scaling * B @ A holds {bad} NaN or infinite value(s) (lora_A or lora_B "
                "holds NaN/inf, or overflowed); merged in, it could never be taken out again. Nothing was changed."
            )
        folded = (weight.float() + sign * delta).to(weight.dtype)
        if not bool(torch.isfinite(folded).all()):
            raise ValueError(
                f"{'merging' if sign > 0 else 'unmerging'} would put NaN/inf into the base weight (overflow in "
                f"{weight.dtype}, or a base weight that already holds NaN/inf). Nothing was changed."
            )
        weight.copy_(folded)
        self.merged = sign > 0

    def merge(self) -> None:
        """Fold the update into the base weight: afterwards forward is the base layer alone."""
        if self.merged:
            warnings.warn("LoRALinear.merge(): already merged; nothing to do", stacklevel=2)
            return
        self._fold(1)

    def unmerge(self) -> None:
        """Take the update out of the base weight again, restoring the original (to float rounding)."""
        if not self.merged:
            warnings.warn("LoRALinear.unmerge(): not merged; nothing to do", stacklevel=2)
            return
        self._fold(-1)

    @contextmanager
    def disable_adapter(self) -> Iterator[LoRALinear]:
        """Inside ``with layer.disable_adapter():`` the layer computes its base alone; afterwards, as before.

        A merged layer is unmerged on entry and merged again on exit (as PEFT unmerges a disabled layer).
        """
        was_merged, was_disabled = self.merged, self.disabled
        if was_merged:
            self.unmerge()
        self.disabled = True
        try:
            yield self
        finally:
            self.disabled = was_disabled
            if was_merged and not self.merged:
                self.merge()

    def extra_repr(self) -> str:
        return (
            f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}, "
            f"rslora={self.use_rslora}, merged={self.merged}"
        )


# ------------------------------------------------------------------------------------------------
# Models


def _matches(name: str, target_modules: str | tuple[str, ...]) -> bool:
    """PEFT's rule: a string is a regex that must match the whole module path; a list entry matches the
    path exactly or as its last dotted components (``"q_proj"`` matches ``"model.layers.0.self_attn.q_proj"``)."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def _normalise_targets(target_modules) -> str | tuple[str, ...]:
    if isinstance(target_modules, str):
        if not target_modules:
            raise ValueError("target_modules is empty: name the layers to adapt, e.g. ['q_proj', 'v_proj']")
        try:
            re.compile(target_modules)
        except re.error as err:
            raise ValueError(
                f"target_modules: {target_modules!r} is not a valid regular expression ({err})"
            ) from None
        return target_modules
    if not isinstance(target_modules, Iterable):
        raise TypeError(f"target_modules must be a str or a list of str, got {type(target_modules).__name__}")
    targets = tuple(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"target_modules must be a non-empty list of module names such as ['q_proj', 'v_proj'], got {targets!r}"
        )
    return targets


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in ``model``, by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    *,
    use_rslora: bool = False,
) -> nn.Module:
    """Wrap each matching linear layer of ``model`` in a :class:`LoRALinear`, in place; freeze everything else.

    ``target_modules`` follows PEFT: a list of names matches a module whose path equals a name or ends with
    ``"." + name`` (``["q_proj", "v_proj"]``); a single string is a regular expression that must match the
    whole path. Everything is checked before anything is replaced, so a bad call leaves the model as it was.
    Raises ``ValueError`` if nothing matches, if the model already has LoRA layers (injecting twice), or if
    ``r``/``alpha``/``dropout`` are out of range for a matched layer; ``TypeError`` if a matched module is not
    a linear layer. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    targets = _normalise_targets(target_modules)
    existing = lora_layers(model)
    if existing:
        raise ValueError(
            f"model already has {len(existing)} LoRA layers (e.g. {next(iter(existing))!r}): inject_lora was "
            "called twice. Load a fresh base model, or use load_lora_state_dict to put other weights in these."
        )
    matched = [(n, m) for n, m in model.named_modules() if n and _matches(n, targets)]
    if not matched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"target_modules {target_modules!r} matches no module in {type(model).__name__}; "
            f"its linear layers are named {leaves}"
        )
    for name, module in matched:
        try:
            fin, fout = _features(module)
        except TypeError:
            raise TypeError(
                f"target_modules {target_modules!r} matches {name!r}, a {type(module).__name__}, which is not a "
                "linear layer; name its linear sub-layers instead (e.g. 'q_proj' rather than 'self_attn')"
            ) from None
        try:
            _check_hyper(r, alpha, dropout, fin, fout)
        except ValueError as err:
            raise ValueError(f"{err} (layer {name!r})") from None
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in matched:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, r, alpha, dropout, use_rslora=use_rslora))
    return model


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameter counts (4-bit bitsandbytes weights counted as 2 per stored byte, as PEFT does)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """trainable / total."""
        return self.trainable / self.total if self.total else 0.0

    def __iter__(self):  # so that ``trainable, total = count_parameters(model)`` works
        return iter((self.trainable, self.total))

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {100 * self.fraction:.4f}"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and total parameters; shared (tied) tensors count once, like ``model.parameters()``."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":  # two 4-bit values per byte of storage
            n *= 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return ParameterCount(trainable, total)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only: ``{"<path>.lora_A": (r, in), "<path>.lora_B": (out, r)}`` (detached copies)."""
    sd = {}
    for name, layer in lora_layers(model).items():
        sd[f"{name}.lora_A"] = layer.lora_A.detach().clone()
        sd[f"{name}.lora_B"] = layer.lora_B.detach().clone()
    return sd


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Copy adapter weights (as from :func:`lora_state_dict`) into ``model``'s LoRA layers, in place.

    Strict: every LoRA layer must get both matrices with the right shapes and no key may be left over,
    else ``ValueError`` listing what differs. Merged layers are refused (unmerge first): loading new
    weights under a merged update would leave the old update in the base weight.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(
            "model has no LoRA layers: call inject_lora(model, ...) with the same settings first"
        )
    expected = {f"{n}.lora_{ab}" for n in layers for ab in "AB"}
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"state_dict does not fit this model's LoRA layers: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''} "
            f"({len(missing)} missing, {len(unexpected)} unexpected); were the same target_modules used?"
        )
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"layers {merged[:3]} are merged: unmerge them before loading other adapter weights")
    for name, layer in layers.items():
        for ab in "AB":
            param, value = getattr(layer, f"lora_{ab}"), state_dict[f"{name}.lora_{ab}"]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"state_dict[{name + '.lora_' + ab!r}] has shape {tuple(value.shape)}, the layer expects "
                    f"{tuple(param.shape)} (was the adapter trained with another r?)"
                )
            param.copy_(value)
    return model


def merge_lora(model: nn.Module, *, unload: bool = False) -> nn.Module:
    """Merge every LoRA layer's update into its base weight, in place.

    With ``unload=True`` each ``LoRALinear`` is then replaced by its (merged) base layer, leaving a plain
    model with no trace of LoRA (what you would ship as a merged copy). Returns ``model``.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to merge")
    for layer in layers.values():
        layer._merge_target()  # check every layer can merge before touching any
    for name, layer in layers.items():
        if not layer.merged:
            layer.merge()
        if unload:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.base_layer)
    return model


@contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_adapter(model): ...`` runs the base model alone: every LoRA layer computes its base layer
    only (merged ones are unmerged for the block and merged again after it). PEFT's
    ``PeftModel.disable_adapter()`` for a model made with :func:`inject_lora`. Yields ``model``."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: nothing to disable (call inject_lora first)")
    with ExitStack() as stack:
        for layer in layers.values():
            stack.enter_context(layer.disable_adapter())
        yield model


# ------------------------------------------------------------------------------------------------
# PEFT's on-disk format


def peft_target_modules(model: nn.Module) -> list[str]:
    """The shortest ``target_modules`` list that makes PEFT wrap exactly the layers this model has LoRA on.

    The last path components (``["q_proj", "v_proj"]``) if they select exactly those layers, else the
    full paths (PEFT matches those exactly).
    """
    layers = lora_layers(model)
    short = sorted({n.rsplit(".", 1)[-1] for n in layers})
    # PEFT sees the model before wrapping: our wrappers' inner modules are not candidates.
    names = {n for n, _ in model.named_modules() if ".base_layer" not in n and ".lora_dropout" not in n}
    wanted = set(layers)
    selected = {n for n in names if n and _matches(n, tuple(short))}
    return short if selected == wanted else sorted(wanted)


def save_peft_adapter(
    model: nn.Module,
    folder: str | Path,
    base_model_name_or_path: str | None = None,
    *,
    task_type: str = "CAUSAL_LM",
    overwrite: bool = False,
) -> Path:
    """Write the adapter in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

    Keys are PEFT's: ``base_model.model.<path>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r),
    float32. ``peft.PeftModel.from_pretrained(base, folder)`` then rebuilds the same model. All LoRA layers
    must share r, alpha, dropout and rsLoRA (one PEFT config). Refuses to replace an existing adapter in
    ``folder`` unless ``overwrite=True``. Returns the folder.
    """

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: nothing to save (call inject_lora first)")
    settings = {(m.r, m.alpha, m.dropout_p, m.use_rslora) for m in layers.values()}
    if len(settings) != 1:
        raise ValueError(
            f"LoRA layers differ in (r, alpha, dropout, rslora) {sorted(settings)}: PEFT needs one config"
        )
    if any(m.merged for m in layers.values()):
        raise ValueError("some LoRA layers are merged: unmerge them before saving the adapter")
    r, alpha, dropout, rslora = settings.pop()
    folder = Path(folder)
    files = [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
    if not overwrite and any(f.exists() for f in files):
        raise FileExistsError(
            f"folder: {folder} already holds an adapter; pass overwrite=True or choose another folder"
        )
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": rslora,
        "target_modules": peft_target_modules(model),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.detach().float().contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.detach().float().contiguous().cpu()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(files[1]), metadata={"format": "pt"})
    files[0].write_text(json.dumps(config, indent=2))
    return folder


# Settings of a PEFT LoRA adapter that change what it computes beyond ``W x + scaling * B A x``.
_PEFT_UNSUPPORTED = {
    "use_dora": "DoRA",
    "fan_in_fan_out": "Conv1D-style transposed weights",
    "modules_to_save": "fully trained extra modules",
    "layers_to_transform": "adapting only some layer indices",
    "exclude_modules": "excluded module names",
    "rank_pattern": "a different r for some layers",
    "alpha_pattern": "a different alpha for some layers",
    "lora_bias": "a trained bias in lora_B",
    "trainable_token_indices": "trained embedding rows",
    "layer_replication": "replicated layers",
    "target_parameters": "adapted nn.Parameters",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA",
    "use_bdlora": "block-diagonal LoRA",
    "megatron_config": "Megatron layers",
}


def _read_peft_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, the tensors of adapter_model.safetensors); errors name the file."""

    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not folder.is_dir():
        raise FileNotFoundError(f"folder: {folder} is not a folder (a PEFT adapter is a folder)")
    if not config_file.is_file():
        raise FileNotFoundError(
            f"folder: {folder} has no adapter_config.json; is it a folder saved by PEFT's save_pretrained?"
        )
    if not weights_file.is_file():
        bin_file = (
            " (adapter_model.bin, pickled, is not read: re-save it with PEFT)"
            * (folder / "adapter_model.bin").is_file()
        )
        raise FileNotFoundError(f"folder: {folder} has no adapter_model.safetensors{bin_file}")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_file}: peft_type must be 'LORA' (a LoRA adapter), got {got!r}")
    for key, what in _PEFT_UNSUPPORTED.items():
        value = config.get(key)
        if value not in (None, False, {}, [], "none"):
            raise ValueError(
                f"{config_file}: {key}={value!r} ({what}) is not plain LoRA, which is all LoRALinear computes; "
                "load this adapter with peft.PeftModel.from_pretrained instead"
            )
    if config.get("bias", "none") != "none" or config.get("init_lora_weights", True) not in (
        True,
        False,
        "gaussian",
    ):
        raise ValueError(
            f"{config_file}: bias={config.get('bias')!r}, init_lora_weights={config.get('init_lora_weights')!r}: "
            "lora101 loads adapters with bias='none' whose initialisation left the base weights unchanged"
        )
    return config, load_file(str(weights_file))


def _peft_keys_to_ours(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """PEFT's ``base_model.model.<path>.lora_A.weight`` -> ``<path>.lora_A`` (the form of :func:`lora_state_dict`)."""
    state_dict = {}
    for key, value in tensors.items():
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if match is None:
            raise ValueError(
                f"folder: {folder}: tensor {key!r} is not a LoRA A or B matrix (expected "
                "'base_model.model.<module path>.lora_A.weight'); lora101 loads plain LoRA adapters only"
            )
        state_dict[f"{match[1]}.lora_{match[2]}"] = value
    return state_dict


def _check_peft_fits(
    model: nn.Module, config: dict, state_dict: dict[str, torch.Tensor], folder: Path
) -> None:
    """Before injecting: the adapter's layers are exactly those target_modules matches, with matching shapes."""
    targets = _normalise_targets(config.get("target_modules") or "")
    matched = {n: m for n, m in model.named_modules() if n and _matches(n, targets)}
    paths = {k.rsplit(".", 1)[0] for k in state_dict}
    if paths != set(matched):
        missing, extra = sorted(set(matched) - paths), sorted(paths - set(matched))
        raise ValueError(
            f"folder: {folder}: the adapter does not fit this model: target_modules {targets!r} matches "
            f"{len(matched)} modules; tensors missing for {missing[:3]}, tensors for unknown modules {extra[:3]}. "
            "Was it trained on another base model?"
        )
    r = config["r"]
    for name, module in matched.items():
        fin, fout = _features(module)
        for ab, shape in (("A", (r, fin)), ("B", (fout, r))):
            got = tuple(state_dict[f"{name}.lora_{ab}"].shape)
            if got != shape:
                raise ValueError(
                    f"folder: {folder}: {name}.lora_{ab} has shape {got}, a {fout}x{fin} layer with r={r} needs {shape}"
                )


def load_peft_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load a LoRA adapter folder saved by PEFT (``adapter_config.json`` + ``adapter_model.safetensors``).

    A model with no LoRA layers gets them first, from the folder's ``target_modules``, ``r``, ``lora_alpha``,
    ``lora_dropout`` and ``use_rslora`` (:func:`inject_lora`); a model that has them (same r, alpha, rsLoRA)
    is filled in; new layers take the model's train/eval mode. Then it computes what
    ``peft.PeftModel.from_pretrained(model, folder)`` computes (which returns it in eval mode). Plain LoRA
    only: settings such as DoRA or ``modules_to_save`` are refused by name, and so is an adapter whose
    layers or shapes do not fit ``model`` (checked before anything changes). Returns ``model``.
    """
    folder = Path(folder)
    config, tensors = _read_peft_folder(folder)
    state_dict = _peft_keys_to_ours(tensors, folder)
    r, alpha = config.get("r"), config.get("lora_alpha")
    dropout, rslora = config.get("lora_dropout") or 0.0, bool(config.get("use_rslora", False))
    layers = lora_layers(model)
    if layers:
        differ = [n for n, m in layers.items() if (m.r, m.alpha, m.use_rslora) != (r, alpha, rslora)]
        if differ:
            raise ValueError(
                f"folder: {folder} holds an adapter with r={r}, lora_alpha={alpha}, use_rslora={rslora}; layer "
                f"{differ[0]!r} has other settings. Load it into a fresh model (inject_lora is then done for you)"
            )
    else:
        _check_hyper(r, alpha, dropout, 1 << 30, 1 << 30)  # the numbers themselves; each layer's limit below
        _check_peft_fits(model, config, state_dict, folder)
        inject_lora(model, config["target_modules"], r, alpha, dropout, use_rslora=rslora)
        for layer in lora_layers(model).values():
            layer.train(model.training)  # new dropout modules start in training mode; follow the model's
    return load_lora_state_dict(model, state_dict)
