"""A two-layer random Llama (width 64) with SmolLM2's tokenizer: the smallest model the real code paths take.

Shared by the tests that train or run it for seconds (the GPU path under bf16 autocast, torchrun's two
processes); weights are seeded so every test builds the same model.
"""

from __future__ import annotations


def tiny_llama():
    """(model, tokenizer): the model in fp32 on the CPU, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lora101.models import load_tokenizer

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval(), tokenizer
