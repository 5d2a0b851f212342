"""Shared set-up for the conformance grids: lora101 run beside bitsandbytes and PEFT on the same inputs."""

from __future__ import annotations

import importlib

import pytest
import torch

import lora101  # noqa: F401  (before bitsandbytes: silences its CPU kernel warning)
from lora101 import nf4
from lora101.nf4_check import bug_applies


@pytest.fixture(scope="session")
def BF():
    """bitsandbytes.functional (imported after lora101)."""
    return importlib.import_module("bitsandbytes.functional")


@pytest.fixture(scope="session")
def bnb_reference_decode(BF):
    """bitsandbytes' own pure-PyTorch 4-bit decoder (``backends/default/ops.py``, 0.50): ``code[q] * absmax``."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    def decode(packed, absmax, quant_type, blocksize, shape, dtype):
        code = BF.get_4bit_type(quant_type, device="cpu")
        return _dequantize_4bit_compute(packed.reshape(-1), absmax, code, blocksize, shape, dtype).reshape(
            shape
        )

    return decode


@pytest.fixture(scope="session")
def assert_4bit_matches(BF, bnb_reference_decode):
    """Quantise ``w`` with both libraries and demand the same packed codes, block scales (and 8-bit state), and
    the same de-quantised tensor: bitsandbytes' own result, or, where its CPU kernel is known to be wrong
    (``lora101.nf4_check.bug_applies``), its reference decoder's, and then its kernel's result must differ."""

    def check(w, quant_type="nf4", blocksize=64, double_quant=False):
        packed, state = BF.quantize_4bit(
            w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
        )
        ours = nf4.quantize_4bit(w, quant_type, blocksize, double_quant)
        assert torch.equal(ours.packed, packed.reshape(-1)), "packed codes differ"
        assert torch.equal(ours.absmax, state.absmax), "absmax (or its 8-bit codes) differ"
        if double_quant:
            assert torch.equal(ours.absmax2, state.state2.absmax) and torch.equal(ours.offset, state.offset)
        out = nf4.dequantize_4bit(ours)
        assert out.shape == w.shape and out.dtype == w.dtype
        theirs = BF.dequantize_4bit(packed, state).reshape(w.shape)
        absmax = ours.block_absmax()  # bitsandbytes' own 8-bit decoding of it is checked in test_nf4.py
        reference = bnb_reference_decode(packed, absmax, quant_type, blocksize, tuple(w.shape), w.dtype)
        assert torch.equal(out, reference), "de-quantised tensor differs from bitsandbytes' reference decoder"
        if w.dim() >= 2 and bug_applies(tuple(w.shape), blocksize):
            assert not torch.equal(theirs, reference), (
                "bitsandbytes' CPU kernel bug is fixed: see test_bnb_cpu_bug"
            )
        else:
            assert torch.equal(out, theirs), "de-quantised tensor differs from bitsandbytes' dequantize_4bit"
        return ours, state

    return check
