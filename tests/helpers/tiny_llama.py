"""Small random Llamas: the code paths of SmolLM2 (a Llama) in seconds.

``tiny_llama()`` is the smallest model the real fine-tune paths take (SmolLM2's tokenizer, so it trains on
real chat data: the GPU path under bf16 autocast, torchrun's two processes); ``random_llama(**config)`` is
the same architecture at the widths a test needs (memory measurements, PEFT's adapters). Weights are
seeded, so every test that asks for the same model gets the same weights.
"""

from __future__ import annotations


def random_llama(seed: int = 0, **config):
    """A LlamaForCausalLM with random weights drawn after ``torch.manual_seed(seed)``, in fp32 on the CPU, in
    eval mode; ``config`` is passed to LlamaConfig (its defaults are a 7B model: give the widths)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config)).eval()


def tiny_llama():
    """(model, tokenizer): two layers of width 64 with SmolLM2's tokenizer, in fp32 on the CPU, in eval mode."""
    from lora101.models import load_tokenizer

    tokenizer = load_tokenizer()
    model = random_llama(
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
    return model, tokenizer
