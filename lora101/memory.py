"""The memory budget of fine-tuning: full fine-tuning, LoRA and QLoRA, predicted from a model's shapes and
measured on the real thing.

Training memory has five parts; each is ``number of elements x bytes per element``:

* **weights** -- every parameter, in the storage precision (fp32 4 B, bf16/fp16 2 B; QLoRA: the linear layers
  of the blocks in NF4 at ``NF4_BITS`` bits per parameter, everything else in 16-bit, the adapters in fp32);
* **gradients** -- one per *trainable* parameter, in that parameter's precision;
* **optimizer states** -- per trainable parameter: AdamW keeps two fp32 moments (8 B); two 16-bit moments
  (what ``torch.optim.AdamW`` keeps for bf16 parameters) take 4 B, 8-bit Adam 2 B (its per-block constants
  are ignored); SGD with momentum one fp32 buffer (4 B), plain SGD none. ``optimizer_state_dtype`` says
  which: fp32 states (the default), 16-bit ones, or ``"param"``, the trainable parameters' own dtype, which
  is what ``torch.optim.AdamW`` and SGD allocate (``zeros_like(param)``): bf16 moments for a bf16 model
  trained in full, fp32 ones for fp32 LoRA adapters;
* **master weights** (optional) -- mixed-precision training keeps an fp32 copy of 16-bit trainable weights (4 B);
* **activations** -- tensors the forward pass saves for the backward pass; see :func:`activation_elements`.

Not counted: the CUDA context and allocator fragmentation (typically 0.5-1 GB on a GPU), temporary buffers
during the optimizer step, and the KV cache (inference only).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from lora101.nf4 import bits_per_parameter
from lora101.targets import ATTENTION, MLP, parse_targets

__all__ = [
    "ModelShape",
    "PRESETS",
    "NF4_BITS",
    "ATTENTION",
    "MLP",
    "MemoryBudget",
    "estimate_memory",
    "lora_parameter_count",
    "activation_elements",
    "measure_model_memory",
    "measure_training_memory",
    "measure_activation_memory",
    "GPU_SIZES_GB",
    "peak_rss_bytes",
    "peak_memory_bytes",
]

GB = 1e9  # decimal gigabytes, as GPU spec sheets use them
GPU_SIZES_GB: dict[str, float] = {
    "T4": 16,
    "RTX 4090 / A10 (24 GB)": 24,
    "A100 40GB": 40,
    "A100 80GB": 80,
    "H100": 80,
}

# NF4 with double quantisation (QLoRA's setting): 4 bits a weight, an 8-bit absmax per block of 64 weights,
# and an fp32 constant per 256 of those blocks: 4 + 8/64 + 32/(64*256).
NF4_BITS = bits_per_parameter(64, double_quant=True)
NF4_BITS_NO_DOUBLE_QUANT = bits_per_parameter(64)  # an fp32 absmax per block of 64

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_BYTES = {"adamw": 8, "adamw-16bit": 4, "adamw-8bit": 2, "sgd-momentum": 4, "sgd": 0}
# Optimizers whose states are tensors like the parameters (how many per parameter): their bytes follow
# ``optimizer_state_dtype``. The others store their states in a fixed format.
STATES_PER_PARAM = {"adamw": 2, "sgd-momentum": 1, "sgd": 0}
STATE_DTYPES = ("fp32", "bf16", "fp16", "param")
METHODS = ("full", "lora", "qlora")


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a Llama-style decoder (SmolLM2, Llama 2/3, Mistral...): enough to count everything."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config, name: str | None = None) -> ModelShape:
        """From a transformers config (``model.config`` or ``AutoConfig.from_pretrained(...)``)."""
        try:
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            return cls(
                name=name or getattr(config, "_name_or_path", "") or config.model_type,
                hidden=config.hidden_size,
                layers=config.num_hidden_layers,
                intermediate=config.intermediate_size,
                vocab=config.vocab_size,
                heads=heads,
                kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                head_dim=head_dim,
                tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            )
        except AttributeError as err:
            raise TypeError(f"config: not a Llama-style transformers config ({err})") from None

    @classmethod
    def from_param_count(cls, n_params: float, name: str | None = None) -> ModelShape:
        """A Llama-2-like shape with about ``n_params`` parameters (approximate: layers = hidden / 128,
        intermediate = 8/3 hidden, vocab 32000, untied, full multi-head attention)."""
        if not (isinstance(n_params, (int, float)) and n_params >= 1e6):
            raise ValueError(f"n_params must be a parameter count of at least 1e6, got {n_params!r}")
        # n ~ 12 * layers * hidden^2 = 12 * hidden^3 / 128 for the blocks; solve for hidden, round to 128.
        hidden = max(128, round((n_params * 128 / 12) ** (1 / 3) / 128) * 128)
        shape = cls(
            name or f"~{n_params / 1e9:.3g}B",
            hidden,
            hidden // 128,
            round(8 * hidden / 3 / 64) * 64,
            32000,
            hidden // 128,
            hidden // 128,
            128,
            False,
        )
        # Then fix the layer count so that the total comes out closest to n_params.
        per_layer = shape.layer_params()
        rest = shape.n_params - shape.layers * per_layer
        return replace(shape, layers=max(1, round((n_params - rest) / per_layer)))

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Each linear layer of one block: name -> (in_features, out_features)."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_params(self) -> int:
        """Parameters of one block: its seven linear layers and two RMSNorm weights."""
        return sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden

    @property
    def linear_params(self) -> int:
        """Parameters in the blocks' linear layers (what QLoRA quantises)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def n_params(self) -> int:
        """Every parameter: embeddings, blocks, final norm, and the LM head unless tied to the embeddings."""
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied_embeddings else 2) + self.layers * self.layer_params() + self.hidden


# Real shapes (from the models' published configs) for the sizes LoRA write-ups talk about.
PRESETS: dict[str, ModelShape] = {
    "SmolLM2-135M": ModelShape("SmolLM2-135M", 576, 30, 1536, 49152, 9, 3, 64, True),
    "Llama-2-7B": ModelShape("Llama-2-7B", 4096, 32, 11008, 32000, 32, 32, 128, False),
    "Llama-3-8B": ModelShape("Llama-3-8B", 4096, 32, 14336, 128256, 32, 8, 128, False),
    "Llama-2-13B": ModelShape("Llama-2-13B", 5120, 40, 13824, 32000, 40, 40, 128, False),
    "Llama-2-70B": ModelShape("Llama-2-70B", 8192, 80, 28672, 32000, 64, 8, 128, False),
}


def _shape(model) -> ModelShape:
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        if model not in PRESETS:
            raise ValueError(f"model: {model!r} is not a preset; presets: {list(PRESETS)}")
        return PRESETS[model]
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return ModelShape.from_param_count(model)
    if isinstance(model, nn.Module) and hasattr(model, "config"):
        return ModelShape.from_config(model.config)
    if hasattr(model, "hidden_size"):
        return ModelShape.from_config(model)
    raise TypeError(
        f"model must be a ModelShape, a preset name, a parameter count, a transformers config or model; "
        f"got {type(model).__name__}"
    )


def lora_parameter_count(model, r: int, target_modules: Iterable[str] | str = ATTENTION) -> int:
    """Adapter parameters: ``r * (in + out)`` for each targeted linear layer of every block."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    shape = _shape(model)
    dims = shape.linear_shapes()
    return shape.layers * sum(r * (dims[t][0] + dims[t][1]) for t in parse_targets(target_modules))


def activation_elements(
    model,
    batch_size: int,
    seq_len: int,
    *,
    method: str = "full",
    target_modules: Iterable[str] | str = ATTENTION,
    gradient_checkpointing: bool = False,
) -> tuple[int, int]:
    """Approximate number of activation elements saved for backward: ``(in the blocks, for the loss)``.

    Per token and block, counting the tensors a Llama block saves (attention through SDPA/flash, which
    keeps no seq x seq score matrix):

    * full fine-tuning: ``8 h + 2 kv + 4 i`` (norm inputs and outputs, q, attention output, k, v, and the
      MLP's gate, up, SiLU(gate) and their product);
    * LoRA/QLoRA with attention targets: ``5 h + 2 kv + 3 i`` -- frozen linear layers and norms need not
      keep their inputs for weight gradients; MLP targets add back their inputs (``h`` for gate/up,
      ``i`` for down);
    * with gradient checkpointing only each block's input (``h``) is kept, plus one block's worth
      recomputed during the backward pass.

    For the loss: ``vocab + 3 h`` per token (the log-softmax over the vocabulary dominates for small models).
    The coefficients were counted on SmolLM2 with ``torch.autograd.graph.saved_tensors_hooks``
    (:func:`measure_activation_memory`); lesson 1 checks them.
    """
    s = _shape(model)
    h, i, kv = s.hidden, s.intermediate, s.kv_dim
    if method == "full":
        per_block = 8 * h + 2 * kv + 4 * i
    else:
        targets = parse_targets(target_modules)
        per_block = 5 * h + 2 * kv + 3 * i
        per_block += h * any(t in targets for t in ("gate_proj", "up_proj")) + i * ("down_proj" in targets)
    tokens = batch_size * seq_len
    blocks = tokens * (s.layers * h + per_block) if gradient_checkpointing else tokens * s.layers * per_block
    return blocks, tokens * (s.vocab + 3 * h)


@dataclass(frozen=True)
class MemoryBudget:
    """A training memory budget in bytes, part by part (see the module docstring for what each part is)."""

    method: str
    weights: float
    gradients: float
    optimizer: float
    master_weights: float
    activations: float
    trainable_params: int
    total_params: int

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.master_weights + self.activations

    def parts_gb(self) -> dict[str, float]:
        """The non-zero parts in GB (1e9 bytes), in a fixed order, for tables and bar charts."""
        names = ("weights", "gradients", "optimizer", "master_weights", "activations")
        return {n: getattr(self, n) / GB for n in names}

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def estimate_memory(
    model,
    method: str = "full",
    *,
    precision: str = "bf16",
    optimizer: str = "adamw",
    r: int = 8,
    target_modules: Iterable[str] | str = ATTENTION,
    batch_size: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = False,
    master_weights: bool = False,
    activations: bool = True,
    double_quant: bool = True,
    optimizer_state_dtype: str = "fp32",
) -> MemoryBudget:
    """Predict the training memory of ``method`` ("full", "lora" or "qlora") for ``model``.

    ``model``: a :class:`ModelShape`, a preset name (``PRESETS``), a transformers config or model, or a
    parameter count (then a Llama-2-like shape of that size is assumed). ``precision``: "fp32", "bf16" or
    "fp16", the storage of the weights (for QLoRA: of everything that is not quantised) and of the
    activations. Full fine-tuning trains every weight in ``precision``; LoRA and QLoRA train fp32 adapters
    (``r``, ``target_modules`` a spec of :mod:`lora101.targets`: "all-linear", "attention", "mlp" or names)
    on a frozen base. ``optimizer``: "adamw" (8 B/param), "adamw-16bit" (4), "adamw-8bit" (2), "sgd-momentum" (4), "sgd" (0).
    ``master_weights``: add an fp32 copy of 16-bit trainable weights (mixed precision). ``activations``:
    include :func:`activation_elements` at ``batch_size`` x ``seq_len``. ``optimizer_state_dtype``: the
    dtype of "adamw"'s and "sgd-momentum"'s states, "fp32" (default), "bf16", "fp16", or "param" for the
    trainable parameters' dtype (PyTorch's own optimizers: bf16 states when a bf16 model is trained in full).
    """
    _check_training_arguments(method, precision, optimizer, batch_size, seq_len, optimizer_state_dtype)
    shape = _shape(model)
    wbytes = BYTES[precision]
    if method == "full":
        trainable, tbytes = shape.n_params, wbytes
    else:
        trainable, tbytes = lora_parameter_count(shape, r, target_modules), 4  # adapters train in fp32
    act = 0.0
    if activations:
        blocks, head = activation_elements(
            shape,
            batch_size,
            seq_len,
            method=method,
            target_modules=target_modules,
            gradient_checkpointing=gradient_checkpointing,
        )
        act = blocks * wbytes + head * 4  # the loss is computed in fp32
    return MemoryBudget(
        method=method,
        weights=_weight_bytes(shape, method, wbytes, trainable, double_quant),
        gradients=trainable * tbytes,
        optimizer=trainable * _optimizer_bytes(optimizer, optimizer_state_dtype, tbytes),
        master_weights=trainable * 4 if (master_weights and tbytes < 4) else 0,
        activations=act,
        trainable_params=trainable,
        total_params=shape.n_params + (trainable if method != "full" else 0),
    )


def _check_training_arguments(
    method: str, precision: str, optimizer: str, batch_size: int, seq_len: int, state_dtype: str = "fp32"
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if precision not in BYTES:
        raise ValueError(f"precision must be one of {tuple(BYTES)}, got {precision!r}")
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZER_BYTES)}, got {optimizer!r}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"optimizer_state_dtype must be one of {STATE_DTYPES}, got {state_dtype!r}")
    for arg, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")


def _optimizer_bytes(optimizer: str, state_dtype: str, param_bytes: int) -> int:
    """Bytes of optimizer state per trainable parameter."""
    if optimizer not in STATES_PER_PARAM:
        return OPTIMIZER_BYTES[optimizer]
    state_bytes = param_bytes if state_dtype == "param" else BYTES[state_dtype]
    return STATES_PER_PARAM[optimizer] * state_bytes


def _weight_bytes(
    shape: ModelShape, method: str, wbytes: int, adapter_params: int, double_quant: bool
) -> float:
    """The weights' bytes: every parameter at ``wbytes``; for LoRA/QLoRA the frozen base (QLoRA: the
    blocks' linear layers in NF4) plus the fp32 adapters (``adapter_params``)."""
    n = shape.n_params
    if method == "full":
        return n * wbytes
    if method == "lora":
        base = n * wbytes
    else:
        bits = NF4_BITS if double_quant else NF4_BITS_NO_DOUBLE_QUANT
        base = shape.linear_params * bits / 8 + (n - shape.linear_params) * wbytes
    return base + adapter_params * 4


# ------------------------------------------------------------------------------------------------
# Measuring what PyTorch really holds


def _storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared and tied tensors count once)."""
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def measure_model_memory(model: nn.Module) -> dict[str, int]:
    """Bytes the model holds right now: ``{"parameters", "buffers", "trainable", "gradients"}``.

    Summed over distinct tensor storages (a tied embedding counts once; a 4-bit layer counts its packed bytes
    and quantisation constants where they are parameters or buffers).
    """
    seen: set[int] = set()
    params = list(model.parameters())
    out = {"parameters": _storage_bytes(params, seen)}
    out["buffers"] = _storage_bytes(model.buffers(), seen)
    out["trainable"] = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    out["gradients"] = _storage_bytes((p.grad for p in params), set())
    # bitsandbytes keeps each 4-bit weight's block constants on a QuantState attached to the weight.
    quant = [getattr(p, "quant_state", None) for p in params]
    qbytes = 0
    for q in quant:
        if q is None:
            continue
        qbytes += _storage_bytes([q.absmax, getattr(q, "code", None)], seen)
        if getattr(q, "state2", None) is not None:
            qbytes += _storage_bytes([q.state2.absmax, q.state2.code, getattr(q, "offset", None)], seen)
    out["quant_constants"] = qbytes
    return out


def measure_training_memory(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of weights, gradients and optimizer states, after at least one ``optimizer.step()``.

    Returns ``{"weights", "gradients", "optimizer"}`` (weights = parameters + buffers + 4-bit constants).
    """
    held = measure_model_memory(model)
    states = [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {
        "weights": held["parameters"] + held["buffers"] + held["quant_constants"],
        "gradients": held["gradients"],
        "optimizer": _storage_bytes(states, set()),
    }


def measure_activation_memory(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors the forward pass saves for backward (not counting the model's own weights).

    Runs ``model(**batch)`` once under ``torch.autograd.graph.saved_tensors_hooks`` and sums the distinct
    storages saved; nothing is kept afterwards.
    """
    weight_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_ptrs |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    del out
    return sum(v for k, v in saved.items() if k not in weight_ptrs)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes; 0 where unavailable.

    On Linux it is VmHWM, the high-water mark of this process's own memory. ru_maxrss is not: it also
    keeps the peak of the process it was forked from (the kernel carries it across exec), so a worker
    started by a large notebook kernel or test runner would report its parent's memory as its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:  # not Linux
        pass
    try:
        import resource
    except ImportError:  # Windows
        return 0

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB, macOS bytes


def peak_memory_bytes(device) -> int:
    """Peak memory of this run: ``torch.cuda.max_memory_allocated`` on CUDA, else peak RSS."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    return peak_rss_bytes()


def gb(n_bytes: float) -> float:
    """Bytes to decimal GB, rounded to 3 significant figures for display."""
    return float(f"{n_bytes / GB:.3g}") if n_bytes else 0.0
