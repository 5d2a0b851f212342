"""Plausible wrong answers and alternative correct answers for every autograded cell of the exercises.

``VARIANTS[assignment][test_grade_id]`` is ``{"answer": answer_grade_id, "wrong": {name: code},
"right": {name: code}}``. A variant's code is what a learner would put in the answer cell: if it starts with
``+`` it is appended to the reference solution (the learner got the rest right and one function wrong),
otherwise it replaces the whole cell. Every wrong answer must make its test cell fail (fewer than full
marks) and every right one must pass (full marks), with visible and hidden tests together. ``SPARED`` lists
wrong answers that another test cell catches and that a given test cell must therefore not charge again.
"""

from __future__ import annotations

# ------------------------------------------------------------------ 2: a LoRA layer, as knobs on one template
LAYER = """
class LoRALayer(nn.Module):
    def __init__(self, base, r, alpha, use_rslora=False):
        super().__init__()
        self.base = base
        {freeze}
        self.lora_A = nn.Parameter(torch.empty({a_shape}, dtype={adapter_dtype}))
        self.lora_B = nn.Parameter({b_init})
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = {scaling}
        self.merged = False

    def forward(self, x):
        y = self.base(x)
        if self.merged{merged_guard}:
            return y
        return y + ({adapter}){cast}

    def merge(self):
        {merge_guard}
        w = self.base.weight
        with torch.no_grad():
            self.saved = w.detach().clone()
            {merge}
        self.merged = True

    def unmerge(self):
        {unmerge_guard}
        w = self.base.weight
        with torch.no_grad():
            {unmerge}
        self.merged = False
"""
GOOD = dict(
    freeze="base.weight.requires_grad_(False); base.bias.requires_grad_(False)",
    a_shape="r, base.in_features",
    adapter_dtype="torch.float32",
    b_init="torch.zeros(base.out_features, r)",
    scaling="alpha / math.sqrt(r) if use_rslora else alpha / r",
    merged_guard="",
    adapter="self.scaling * (x.float() @ self.lora_A.T @ self.lora_B.T)",
    cast=".to(y.dtype)",
    merge="w.copy_(w.float() + self.scaling * self.lora_B @ self.lora_A)",
    unmerge="w.copy_(self.saved)",
    merge_guard="if self.merged: return",
    unmerge_guard="if not self.merged: return",
)


def layer(**changes) -> str:
    return LAYER.format(**{**GOOD, **changes})


# Lesson 2's layer, given the float32 adapter and the dtype casts: merge adds, unmerge subtracts.
SUBTRACTS = dict(unmerge="w.copy_(w.float() - self.scaling * self.lora_B @ self.lora_A)")

LAYER_RESIDUE = '''
import torch.nn.functional as F


class LoRALayer(nn.Module):
    """Alternative: F.linear everywhere, scaling as a property, and the float64 difference between the
    original and the merged weight kept instead of a copy (exact for weights of ordinary sizes)."""

    def __init__(self, base, r, alpha, use_rslora=False):
        super().__init__()
        self.base = base.requires_grad_(False)
        a = nn.Linear(base.in_features, r, bias=False)  # its default init is Kaiming uniform, a=sqrt(5), float32
        self.lora_A = nn.Parameter(a.weight.detach().clone())
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.r, self.alpha, self.rs = r, alpha, use_rslora
        self.merged = False

    @property
    def scaling(self):
        return self.alpha / (self.r ** 0.5 if self.rs else self.r)

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + F.linear(F.linear(x.to(torch.float32), self.lora_A), self.lora_B).mul(self.scaling).to(out.dtype)

    def merge(self):
        if self.merged:
            return
        w = self.base.weight.data
        original = w.double()
        w.copy_(w.float() + self.scaling * torch.mm(self.lora_B, self.lora_A))
        self.residue = original - w.double()
        self.merged = True

    def unmerge(self):
        if not self.merged:
            return
        w = self.base.weight.data
        w.copy_(w.double() + self.residue)
        self.merged = False
'''

LAYER_DELTA = '''
class LoRALayer(nn.Module):
    """Alternative: forward through the effective weight W + s B A in float32; the original weight kept on the
    CPU while merged; einsum for the delta."""

    def __init__(self, base, r, alpha, use_rslora=False):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad = False
        self.lora_A = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(r, base.in_features), a=5 ** 0.5))
        self.lora_B = nn.Parameter(torch.zeros((base.out_features, r)))
        self.scaling = float(alpha) / (float(r) ** 0.5 if use_rslora else float(r))
        self.merged = False
        self._keep = None

    def delta(self):
        return torch.einsum("or,ri->oi", self.lora_B, self.lora_A) * self.scaling

    def forward(self, x):
        if self.merged:
            return self.base(x)
        w, b = self.base.weight.float() + self.delta(), self.base.bias
        return torch.nn.functional.linear(x.float(), w, None if b is None else b.float()).to(x.dtype)

    def merge(self):
        if not self.merged:
            with torch.no_grad():
                self._keep = self.base.weight.detach().to("cpu", copy=True)
                self.base.weight.copy_((self.base.weight.float() + self.delta()).to(self.base.weight.dtype))
            self.merged = True

    def unmerge(self):
        if self.merged:
            with torch.no_grad():
                self.base.weight.copy_(self._keep)
            self._keep = None
            self.merged = False
'''

VARIANTS: dict[str, dict[str, dict]] = {
    "01_memory": {
        "test_lora_params": {
            "answer": "answer_params",
            "wrong": {
                "square_layer": "+def lora_params(d_in, d_out, r):\n    return 2 * d_in * r",
                "full_weight": "+def lora_params(d_in, d_out, r):\n    return d_in * d_out",
                "only_A": "+def lora_params(d_in, d_out, r):\n    return r * d_in",
                "plus_bias": "+def lora_params(d_in, d_out, r):\n    return r * (d_in + d_out) + d_out",
            },
            "right": {
                "two_terms": "+def lora_params(d_in, d_out, r):\n    return d_in * r + r * d_out",
                "from_tensors": "+def lora_params(d_in, d_out, r):\n    import torch\n"
                "    return torch.empty(r, d_in).numel() + torch.empty(d_out, r).numel()",
            },
        },
        "test_linear_shapes": {
            "answer": "answer_params",
            "wrong": {
                "no_gqa": "+def linear_shapes(cfg):\n    h, i, q = cfg['hidden'], cfg['intermediate'], cfg['heads'] * cfg['head_dim']\n"
                "    return {'q_proj': (h, q), 'k_proj': (h, q), 'v_proj': (h, q), 'o_proj': (q, h),\n"
                "            'gate_proj': (h, i), 'up_proj': (h, i), 'down_proj': (i, h)}",
                "out_in": "+_right = linear_shapes\ndef linear_shapes(cfg):\n"
                "    return {k: (o, i) for k, (i, o) in _right(cfg).items()}",
                "down_as_up": "+_right = linear_shapes\ndef linear_shapes(cfg):\n"
                "    s = dict(_right(cfg)); s['down_proj'] = s['up_proj']; return s",
            },
            "right": {
                "explicit": "+def linear_shapes(cfg):\n    d = cfg['hidden']\n    kv = cfg['head_dim'] * cfg['kv_heads']\n"
                "    shapes = dict(q_proj=(d, cfg['heads'] * cfg['head_dim']), k_proj=(d, kv), v_proj=(d, kv))\n"
                "    shapes['o_proj'] = shapes['q_proj'][::-1]\n"
                "    shapes.update(gate_proj=(d, cfg['intermediate']), up_proj=(d, cfg['intermediate']),\n"
                "                  down_proj=(cfg['intermediate'], d))\n    return shapes",
                "from_package": "+from lora101.memory import ModelShape\ndef linear_shapes(cfg):\n"
                "    return ModelShape('m', cfg['hidden'], cfg['layers'], cfg['intermediate'], cfg['vocab'], cfg['heads'],\n"
                "                      cfg['kv_heads'], cfg['head_dim'], True).linear_shapes()",
            },
        },
        "test_model_lora_params": {
            "answer": "answer_params",
            "wrong": {
                "one_block": "+def model_lora_params(cfg, r, target_modules):\n"
                "    return sum(lora_params(*linear_shapes(cfg)[t], r) for t in target_modules)",
                "full_layers": "+def model_lora_params(cfg, r, target_modules):\n"
                "    return cfg['layers'] * sum(i * o for i, o in (linear_shapes(cfg)[t] for t in target_modules))",
                "all_targets": "+def model_lora_params(cfg, r, target_modules):\n"
                "    return cfg['layers'] * sum(lora_params(i, o, r) for i, o in linear_shapes(cfg).values())",
            },
            "right": {
                "loop": "+def model_lora_params(cfg, r, target_modules):\n    total = 0\n"
                "    for layer in range(cfg['layers']):\n        for t in target_modules:\n"
                "            d_in, d_out = linear_shapes(cfg)[t]\n            total += r * d_in + r * d_out\n    return total",
                "from_package": "+from lora101.memory import ModelShape, lora_parameter_count\n"
                "def model_lora_params(cfg, r, target_modules):\n"
                "    shape = ModelShape('m', cfg['hidden'], cfg['layers'], cfg['intermediate'], cfg['vocab'], cfg['heads'],\n"
                "                       cfg['kv_heads'], cfg['head_dim'], True)\n"
                "    return lora_parameter_count(shape, r, target_modules)",
            },
        },
        "test_budget": {
            "answer": "answer_budget",
            "wrong": {
                "no_master_copy": "+_right = training_memory_gb\ndef training_memory_gb(n, method, t=0):\n"
                "    return n * 12 / 1e9 if method == 'full' else _right(n, method, t)",
                "gibibytes": "+_right = training_memory_gb\ndef training_memory_gb(n, method, t=0):\n"
                "    return _right(n, method, t) * 1e9 / 2**30",
                "qlora_4_bits": "+_right = training_memory_gb\ndef training_memory_gb(n, method, t=0):\n"
                "    return (n * 0.5 + 16 * t) / 1e9 if method == 'qlora' else _right(n, method, t)",
                "lora_base_gradients": "+_right = training_memory_gb\ndef training_memory_gb(n, method, t=0):\n"
                "    return (n * 4 + 16 * t) / 1e9 if method == 'lora' else _right(n, method, t)",
            },
            "right": {
                "tables": "from lora101.memory import NF4_BITS\n\n"
                "def training_memory_gb(n_params, method, n_trainable=0):\n"
                "    per_param = {'full': 2 + 2 + 8 + 4, 'lora': 2, 'qlora': NF4_BITS / 8}[method]\n"
                "    extra = 0 if method == 'full' else n_trainable * (4 + 4 + 8)\n"
                "    return (n_params * per_param + extra) / 1e9",
                "in_bits": "def training_memory_gb(n_params, method, n_trainable=0):\n"
                "    bits = {'full': 128, 'lora': 16, 'qlora': 4 + 8 / 64 + 32 / 16384}[method]\n"
                "    adapters = 0 if method == 'full' else 128 * n_trainable\n"
                "    return (bits * n_params + adapters) / 8 / 1000**3",
            },
        },
    },
    "02_lora_layer": {
        "test_init": {
            "answer": "answer_layer",
            "wrong": {
                "B_random": layer(b_init="torch.randn(base.out_features, r) * 0.01"),
                "scaling_inverted": layer(scaling="r / alpha"),
                "A_transposed": layer(
                    a_shape="base.in_features, r",
                    adapter="self.scaling * (x.float() @ self.lora_A @ self.lora_B.T)",
                    merge="w.copy_(w.float() + self.scaling * (self.lora_A @ self.lora_B.T).T)",
                ),
                "base_not_frozen": layer(freeze="pass"),
                "A_zero": layer().replace(
                    "nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))", "nn.init.zeros_(self.lora_A)"
                ),
                "rslora_always": layer(scaling="alpha / math.sqrt(r)"),
            },
            "right": {"residue": LAYER_RESIDUE, "effective_weight": LAYER_DELTA},
        },
        "test_forward": {
            "answer": "answer_layer",
            "wrong": {
                "no_scaling": layer(adapter="x.float() @ self.lora_A.T @ self.lora_B.T"),
                "no_adapter": layer(adapter="0 * (x.float() @ self.lora_A.T @ self.lora_B.T)"),
                "scaling_inverted": layer(scaling="r / alpha"),
                "B_A_order": layer(
                    adapter="self.scaling * (x.float() @ (self.lora_A.T @ self.lora_B.T).T.T.T)"
                ),
            },
            "right": {"residue": LAYER_RESIDUE, "effective_weight": LAYER_DELTA},
        },
        "test_merge": {
            "answer": "answer_layer",
            "wrong": {
                "merge_unscaled": layer(merge="w.copy_(w.float() + self.lora_B @ self.lora_A)"),
                "adds_twice": layer(merged_guard=" and False"),
                "unmerge_flag_only": layer(unmerge="pass"),
                "unmerge_subtracts": layer(**SUBTRACTS),
                "merge_twice_saves_merged": layer(merge_guard="pass"),
            },
            "right": {
                "residue": LAYER_RESIDUE,
                "effective_weight": LAYER_DELTA,
                "in_place_add": layer(merge="w += self.scaling * self.lora_B @ self.lora_A"),
            },
        },
        "test_rslora_scaling": {
            "answer": "answer_layer",
            "wrong": {
                "rslora_ignored": layer(scaling="alpha / r"),
                "sqrt_of_ratio": layer(scaling="math.sqrt(alpha / r) if use_rslora else alpha / r"),
                "forward_plain_scaling": layer(
                    freeze=GOOD["freeze"] + "; self.plain = alpha / r",
                    adapter="self.plain * (x.float() @ self.lora_A.T @ self.lora_B.T)",
                ),
                "merge_plain_scaling": layer(
                    freeze=GOOD["freeze"] + "; self.plain = alpha / r",
                    merge="w.copy_(w.float() + self.plain * self.lora_B @ self.lora_A)",
                ),
            },
            "right": {
                "residue": LAYER_RESIDUE,
                "effective_weight": LAYER_DELTA,
                "power": layer(scaling="alpha * r ** (-0.5 if use_rslora else -1)"),
            },
        },
        "test_bf16_base": {
            "answer": "answer_layer",
            "wrong": {
                "adapter_in_base_dtype": layer(
                    adapter_dtype="base.weight.dtype",
                    b_init="torch.zeros(base.out_features, r, dtype=base.weight.dtype)",
                    adapter="self.scaling * (x @ self.lora_A.T @ self.lora_B.T)",
                ),
                "no_float_cast": layer(adapter="self.scaling * (x @ self.lora_A.T @ self.lora_B.T)"),
                "float32_output": layer(cast=""),
                "merge_upcasts": layer(
                    merge="self.base.weight = nn.Parameter(w.float() + self.scaling * self.lora_B @ self.lora_A, "
                    "requires_grad=False)",
                    unmerge="self.base.weight = nn.Parameter(self.saved, requires_grad=False)",
                ),
                "merge_in_bf16": layer(
                    merge="w.copy_(w + (self.scaling * self.lora_B @ self.lora_A).to(w.dtype))"
                ),
            },
            "right": {
                "residue": LAYER_RESIDUE,
                "effective_weight": LAYER_DELTA,
                "in_place_add": layer(merge="w += self.scaling * self.lora_B @ self.lora_A"),
            },
        },
    },
    "03_nf4": {
        "test_absmax": {
            "answer": "answer_absmax",
            "wrong": {
                "drops_partial": "+def absmax_blocks(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    n = flat.numel() // blocksize\n    return flat[: n * blocksize].reshape(n, blocksize).abs().amax(1)",
                "max_not_abs": "+def absmax_blocks(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    return torch.stack([flat[i:i + blocksize].max() for i in range(0, flat.numel(), blocksize)])",
                "whole_tensor": "+def absmax_blocks(w, blocksize):\n    n = -(-w.numel() // blocksize)\n"
                "    return w.abs().max().float().repeat(n)",
                "rows": "+def absmax_blocks(w, blocksize):\n    return w.reshape(-1, w.shape[-1]).abs().amax(1).float()",
            },
            "right": {
                "loop": "+def absmax_blocks(w, blocksize):\n    flat = w.flatten().float()\n"
                "    return torch.tensor([flat[i:i + blocksize].abs().max().item() for i in range(0, len(flat), blocksize)])",
                "pad": "+import torch.nn.functional as F\ndef absmax_blocks(w, blocksize):\n    flat = w.reshape(-1).float().abs()\n"
                "    flat = F.pad(flat, (0, (-flat.numel()) % blocksize))\n    return flat.view(-1, blocksize).max(dim=1).values",
            },
        },
        "test_codes": {
            "answer": "answer_codes",
            "wrong": {
                "global_absmax": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    return (flat / flat.abs().max()).unsqueeze(1).sub(CODE).abs().argmin(1).to(torch.uint8)",
                "bucketize_codes": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    scale = absmax_blocks(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]\n"
                "    return torch.bucketize(flat / scale, CODE).clamp(0, 15).to(torch.uint8)",
                "linear_int4": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    scale = absmax_blocks(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]\n"
                "    return ((flat / scale + 1) * 7.5).round().to(torch.uint8)",
                "int64_codes": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    scale = absmax_blocks(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]\n"
                "    scale = torch.where(scale == 0, torch.ones_like(scale), scale)\n"
                "    return (flat / scale).unsqueeze(1).sub(CODE).abs().argmin(dim=1)",
                "ties_round_up": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    scale = absmax_blocks(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]\n"
                "    scale = torch.where(scale == 0, torch.ones_like(scale), scale)\n"
                "    return (15 - (flat / scale).unsqueeze(1).sub(CODE.flip(0)).abs().argmin(dim=1)).to(torch.uint8)",
                "zero_block_nan": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    scale = absmax_blocks(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]\n"
                "    return (flat / scale).unsqueeze(1).sub(CODE).abs().argmin(dim=1).to(torch.uint8)",
            },
            "right": {
                "midpoints": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n"
                "    scale = absmax_blocks(w, blocksize).repeat_interleave(blocksize)[: flat.numel()]\n"
                "    scale = scale.clamp_min(torch.finfo(torch.float32).tiny)  # 0 / tiny = 0\n"
                "    return torch.bucketize(flat / scale, (CODE[1:] + CODE[:-1]) / 2).to(torch.uint8)",
                "per_block_loop": "+def nf4_codes(w, blocksize):\n    flat = w.reshape(-1).float()\n    out = []\n"
                "    for i in range(0, flat.numel(), blocksize):\n        block = flat[i:i + blocksize]\n"
                "        m = block.abs().max()\n        x = block / m if m > 0 else block\n"
                "        out.append(torch.argmin((x[:, None] - CODE[None, :]).abs(), dim=1))\n"
                "    return torch.cat(out).to(torch.uint8)",
            },
        },
        "test_pack": {
            "answer": "answer_pack",
            "wrong": {
                "low_first": "+def pack_nibbles(codes):\n    codes = codes.reshape(-1).to(torch.uint8)\n"
                "    if codes.numel() % 2:\n        codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8)])\n"
                "    return codes[0::2] | (codes[1::2] << 4)",
                "no_shift": "+def pack_nibbles(codes):\n    codes = codes.reshape(-1).to(torch.uint8)\n"
                "    if codes.numel() % 2:\n        codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8)])\n"
                "    return codes[0::2] + codes[1::2]",
                "drops_odd": "+def pack_nibbles(codes):\n    codes = codes.reshape(-1).to(torch.uint8)\n"
                "    n = codes.numel() // 2 * 2\n    return (codes[0:n:2] << 4) | codes[1:n:2]",
            },
            "right": {
                "multiply": "+import torch.nn.functional as F\ndef pack_nibbles(codes):\n"
                "    c = F.pad(codes.flatten().to(torch.int32), (0, codes.numel() % 2)).view(-1, 2)\n"
                "    return (c[:, 0] * 16 + c[:, 1]).to(torch.uint8)",
                "python_loop": "+def pack_nibbles(codes):\n    c = [int(v) for v in codes.reshape(-1)] + [0]\n"
                "    return torch.tensor([(c[i] << 4) | c[i + 1] for i in range(0, codes.numel(), 2)], dtype=torch.uint8)",
            },
        },
        "test_dequant": {
            "answer": "answer_dequant",
            "wrong": {
                "nibbles_swapped": "+def dequantize(packed, absmax, n, blocksize):\n"
                "    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:n]\n"
                "    return CODE[codes.long()] * absmax.repeat_interleave(blocksize)[:n]",
                "no_absmax": "+def dequantize(packed, absmax, n, blocksize):\n"
                "    return CODE[torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()]",
                "no_trim": "+def dequantize(packed, absmax, n, blocksize):\n"
                "    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)\n"
                "    return CODE[codes.long()] * absmax.repeat_interleave(blocksize)[: codes.numel()]",
                "tiled_absmax": "+def dequantize(packed, absmax, n, blocksize):\n"
                "    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]\n"
                "    return CODE[codes.long()] * absmax.repeat(blocksize)[:n]",
            },
            "right": {
                "floor_div": "+def dequantize(packed, absmax, n, blocksize):\n    p = packed.to(torch.int64)\n"
                "    codes = torch.empty(2 * p.numel(), dtype=torch.int64)\n    codes[0::2] = torch.div(p, 16, rounding_mode='floor')\n"
                "    codes[1::2] = p % 16\n    codes = codes[:n]\n"
                "    scale = torch.stack([absmax[i // blocksize] for i in range(n)])\n    return CODE[codes] * scale",
                "blocks": "+def dequantize(packed, absmax, n, blocksize):\n    hi, lo = (packed >> 4).long(), (packed & 15).long()\n"
                "    values = CODE[torch.stack((hi, lo), -1).flatten()][:n]\n    out = torch.empty(n)\n"
                "    for b, i in enumerate(range(0, n, blocksize)):\n        out[i:i + blocksize] = values[i:i + blocksize] * absmax[b]\n"
                "    return out",
            },
        },
        "test_bits": {
            "answer": "answer_bits",
            "wrong": {
                "forgets_dq_constant": "+def bits_per_param(blocksize, double_quant):\n"
                "    return 4 + (8 if double_quant else 32) / blocksize",
                "ignores_flag": "+def bits_per_param(blocksize, double_quant):\n    return 4 + 32 / blocksize",
                "fp16_constants": "+def bits_per_param(blocksize, double_quant):\n"
                "    return 4 + 8 / blocksize + 16 / (blocksize * 256) if double_quant else 4 + 16 / blocksize",
            },
            "right": {
                "factored": "+def bits_per_param(blocksize, double_quant):\n"
                "    return 4 + ((8 + 32 / 256) if double_quant else 32) / blocksize",
                "count_a_tensor": "+def bits_per_param(blocksize, double_quant):\n    n = blocksize * 256 * 4\n"
                "    blocks = n // blocksize\n    bits = 4 * n + (8 * blocks + 32 * (blocks // 256) if double_quant else 32 * blocks)\n"
                "    return bits / n",
            },
        },
    },
    "04_qlora_config": {
        "test_bnb": {
            "answer": "answer_bnb",
            "wrong": {
                "fp4": "+def make_bnb_config():\n    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='fp4',\n"
                "        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)",
                "no_double_quant": "+def make_bnb_config():\n    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',\n"
                "        bnb_4bit_compute_dtype=torch.bfloat16)",
                "fp16_compute": "+def make_bnb_config():\n    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',\n"
                "        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float16)",
                "eight_bit": "+def make_bnb_config():\n    return BitsAndBytesConfig(load_in_8bit=True)",
            },
            "right": {
                "dtype_string": "+def make_bnb_config():\n    return BitsAndBytesConfig(bnb_4bit_compute_dtype='bfloat16', load_in_4bit=True,\n"
                "        bnb_4bit_use_double_quant=True, bnb_4bit_quant_type='nf4')",
                "from_dict": "+def make_bnb_config():\n    settings = {'load_in_4bit': True, 'bnb_4bit_quant_type': 'nf4',\n"
                "                'bnb_4bit_use_double_quant': True, 'bnb_4bit_compute_dtype': torch.bfloat16}\n"
                "    return BitsAndBytesConfig(**settings)",
            },
        },
        "test_lora": {
            "answer": "answer_lora",
            "wrong": {
                "plain_lora_scaling": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=64, lora_dropout=0.05, bias='none',\n"
                "        task_type='CAUSAL_LM', target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])",
                "rslora_alpha_over_r": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=64, use_rslora=True, lora_dropout=0.05,\n"
                "        bias='none', task_type='CAUSAL_LM', target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])",
                "q_v_only": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=16, use_rslora=True, lora_dropout=0.05,\n"
                "        bias='none', task_type='CAUSAL_LM', target_modules=['q_proj', 'v_proj'])",
                "regex_all_projections": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=16, use_rslora=True, lora_dropout=0.05,\n"
                "        bias='none', task_type='CAUSAL_LM', target_modules=r'.*_proj')",
                "regex_not_whole_name": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=16, use_rslora=True, lora_dropout=0.05,\n"
                "        bias='none', task_type='CAUSAL_LM', target_modules='(q|k|v|o)_proj')",
                "all_linear": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=16, use_rslora=True, lora_dropout=0.05,\n"
                "        bias='none', task_type='CAUSAL_LM', target_modules='all-linear')",
                "seq_cls": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=16, use_rslora=True, lora_dropout=0.05,\n"
                "        bias='none', task_type='SEQ_CLS', target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'])",
            },
            "right": {
                "task_type_enum_set": "+from peft import TaskType\ndef make_lora_config():\n"
                "    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=4 * 16 ** 0.5, use_rslora=True,\n"
                "                      lora_dropout=0.05, target_modules={'o_proj', 'v_proj', 'k_proj', 'q_proj'})",
                "from_dict": "+import math\ndef make_lora_config():\n    kw = dict(r=16, lora_dropout=0.05, bias='none', task_type='CAUSAL_LM', use_rslora=True)\n"
                "    kw['lora_alpha'] = 4 * math.sqrt(kw['r'])\n"
                "    kw['target_modules'] = [f'{p}_proj' for p in 'qkvo']\n    return LoraConfig(**kw)",
                "regex": "+def make_lora_config():\n    return LoraConfig(r=16, lora_alpha=16, use_rslora=True, lora_dropout=0.05,\n"
                "        task_type='CAUSAL_LM', target_modules=r'.*\\.self_attn\\.[qkvo]_proj')",
            },
        },
        "test_count": {
            "answer": "answer_count",
            "wrong": {
                "one_block": "TRAINABLE = 16 * ((576 + 576) + (576 + 192) + (576 + 192) + (576 + 576))",
                "no_gqa": "TRAINABLE = 30 * 16 * 4 * (576 + 576)",
                "r_8": "TRAINABLE = 30 * 8 * ((576 + 576) + (576 + 192) + (576 + 192) + (576 + 576))",
                "float": "TRAINABLE = 1.8432e6",
            },
            "right": {
                "peft_on_the_model": "from peft import get_peft_model\nfrom lora101.models import load_model\n"
                "_model = get_peft_model(load_model(precision='fp32'), make_lora_config())\n"
                "TRAINABLE = sum(p.numel() for p in _model.parameters() if p.requires_grad)",
                "from_package": "from lora101.memory import ModelShape, lora_parameter_count\n"
                "TRAINABLE = lora_parameter_count(ModelShape('smollm2', 576, 30, 1536, 49152, 9, 3, 64, True), 16,\n"
                "                                 ['q_proj', 'k_proj', 'v_proj', 'o_proj'])",
            },
        },
    },
    "05_tradeoffs": {
        "test_route": {
            "answer": "answer_route",
            "wrong": {
                "no_headroom": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    if not c['task_boundary_clear']:\n        return 'clarify'\n    gb = c['n_params'] / 1e9\n"
                "    if c['want_full_capacity'] and gb * 16 <= c['gpu_memory_gb']:\n        return 'full'\n"
                "    if gb * 2 <= c['gpu_memory_gb']:\n        return 'lora'\n"
                "    if gb * NF4_BITS / 8 <= c['gpu_memory_gb']:\n        return 'qlora'\n    return 'smaller_model'",
                "clarify_first": "def choose_route(c):\n    if not c['task_boundary_clear']:\n        return 'clarify'\n"
                "    if c['prompting_good_enough']:\n        return 'prompting'\n    gb = c['n_params'] / 1e9\n"
                "    if c['want_full_capacity'] and gb * 16 <= c['gpu_memory_gb']:\n        return 'full'\n"
                "    if gb * 2.4 <= c['gpu_memory_gb']:\n        return 'lora'\n"
                "    if gb * NF4_BITS / 8 * 1.2 <= c['gpu_memory_gb']:\n        return 'qlora'\n    return 'smaller_model'",
                "strict_fit": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    if not c['task_boundary_clear']:\n        return 'clarify'\n    gb = c['n_params'] / 1e9\n"
                "    if c['want_full_capacity'] and gb * 16 < c['gpu_memory_gb']:\n        return 'full'\n"
                "    if gb * 2.4 < c['gpu_memory_gb']:\n        return 'lora'\n"
                "    if gb * NF4_BITS / 8 * 1.2 < c['gpu_memory_gb']:\n        return 'qlora'\n    return 'smaller_model'",
                "strict_lora_qlora": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    if not c['task_boundary_clear']:\n        return 'clarify'\n    gb = c['n_params'] / 1e9\n"
                "    if c['want_full_capacity'] and gb * 16 <= c['gpu_memory_gb']:\n        return 'full'\n"
                "    if gb * 2 * 1.2 < c['gpu_memory_gb']:\n        return 'lora'\n"
                "    if gb * NF4_BITS / 8 * 1.2 < c['gpu_memory_gb']:\n        return 'qlora'\n    return 'smaller_model'",
                "full_whenever_it_fits": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    if not c['task_boundary_clear']:\n        return 'clarify'\n    gb = c['n_params'] / 1e9\n"
                "    if gb * 16 <= c['gpu_memory_gb']:\n        return 'full'\n"
                "    if gb * 2 * 1.2 <= c['gpu_memory_gb']:\n        return 'lora'\n"
                "    if gb * NF4_BITS / 8 * 1.2 <= c['gpu_memory_gb']:\n        return 'qlora'\n    return 'smaller_model'",
                "four_bits_flat": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    if not c['task_boundary_clear']:\n        return 'clarify'\n    gb = c['n_params'] / 1e9\n"
                "    if c['want_full_capacity'] and gb * 16 <= c['gpu_memory_gb']:\n        return 'full'\n"
                "    if gb * 2 * 1.2 <= c['gpu_memory_gb']:\n        return 'lora'\n"
                "    if gb * 0.5 * 1.2 <= c['gpu_memory_gb']:\n        return 'qlora'\n    return 'smaller_model'",
            },
            "right": {
                "table": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    if not c['task_boundary_clear']:\n        return 'clarify'\n"
                "    needs = [('full', 16, False), ('lora', 2 * 1.2, True), ('qlora', NF4_BITS / 8 * 1.2, True)]\n"
                "    for route, bytes_per_param, always in needs:\n"
                "        if (always or c['want_full_capacity']) and c['n_params'] * bytes_per_param / 1e9 <= c['gpu_memory_gb']:\n"
                "            return route\n    return 'smaller_model'",
                "budgets": "def choose_route(c):\n    if c['prompting_good_enough']:\n        return 'prompting'\n"
                "    elif not c['task_boundary_clear']:\n        return 'clarify'\n    gpu, n = c['gpu_memory_gb'], c['n_params']\n"
                "    full, lora, qlora = n * 16 / 1e9, n * 2 / 1e9 * 1.2, n * NF4_BITS / 8 / 1e9 * 1.2\n"
                "    if c['want_full_capacity'] and full <= gpu:\n        return 'full'\n"
                "    return 'lora' if lora <= gpu else 'qlora' if qlora <= gpu else 'smaller_model'",
            },
        },
    },
}

# One idea costs one test cell's points: each wrong answer named here ("TEST/NAME" in VARIANTS, an answer that
# is wrong in one way) must still earn the full points of the test cell it is listed under.
SPARED: dict[str, dict[str, list[str]]] = {
    "02_lora_layer": {
        "test_init": ["test_rslora_scaling/rslora_ignored", "test_bf16_base/adapter_in_base_dtype"],
        "test_forward": [
            "test_rslora_scaling/rslora_ignored",
            "test_bf16_base/float32_output",
            "test_merge/merge_unscaled",
            "test_merge/unmerge_subtracts",
        ],
        "test_merge": [
            "test_rslora_scaling/rslora_ignored",
            "test_bf16_base/merge_in_bf16",
            "test_bf16_base/float32_output",
        ],
        "test_rslora_scaling": [
            "test_merge/unmerge_subtracts",
            "test_merge/merge_twice_saves_merged",
            "test_bf16_base/float32_output",
            "test_bf16_base/merge_in_bf16",
        ],
        "test_bf16_base": [
            "test_forward/no_scaling",
            "test_merge/merge_unscaled",
            "test_merge/unmerge_subtracts",
            "test_merge/merge_twice_saves_merged",
            "test_rslora_scaling/rslora_ignored",
            "test_rslora_scaling/forward_plain_scaling",
        ],
    },
    "03_nf4": {
        "test_pack": ["test_codes/ties_round_up", "test_codes/zero_block_nan", "test_absmax/drops_partial"],
        "test_dequant": [
            "test_absmax/drops_partial",
            "test_codes/ties_round_up",
            "test_pack/low_first",
            "test_pack/drops_odd",
        ],
    },
}


def _load_more() -> None:
    """An assignment's variants may also live in a module of their own beside this one,
    ``tests/helpers/exercise_variants_<assignment>.py``, that defines ``VARIANTS`` (and optionally ``SPARED``) for it."""
    import importlib.util
    from pathlib import Path

    for path in sorted(Path(__file__).parent.glob("exercise_variants_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, table in (("VARIANTS", VARIANTS), ("SPARED", SPARED)):
            extra = getattr(module, name, {})
            clash = set(extra) & set(table)
            assert not clash, (
                f"{path.name} defines {name} for {sorted(clash)}, already in exercise_variants.py"
            )
            table.update(extra)


_load_more()
