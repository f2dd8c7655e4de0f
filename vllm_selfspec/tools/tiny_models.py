"""Tiny random-weight checkpoints for shape, architecture and tensor-parallel checks only.

Their outputs are meaningless; never use them for speed or acceptance claims. The
Llama-style ones have 4 attention and 2 KV heads, so tensor-parallel size 2 divides them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
}


def write_tiny_model(kind: str, folder: Path, tokenizer_from: Path, num_layers: int = 4) -> Path:
    """Save a random ``kind`` model with the default model's tokenizer into ``folder``."""
    import torch
    import transformers

    config_name, model_name = TINY_ARCHITECTURES[kind]
    config_cls = getattr(transformers, config_name)
    vocab = 49152
    if kind == "gpt2":
        config = config_cls(n_layer=num_layers, n_embd=64, n_head=4, vocab_size=vocab, n_positions=2048)
    else:
        config = config_cls(
            num_hidden_layers=num_layers,
            hidden_size=256,
            intermediate_size=512,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,  # the CPU attention kernels need 32-multiples; 64 is safe
            vocab_size=vocab,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        )
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).to(torch.float32)
    # Larger logits than the default init, so greedy choices are not near-ties.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, folder / name)
    return folder


TINY_VOCAB_SIZE = 32
"""The exact sampling test's vocabulary: small enough to enumerate every short continuation."""


def write_tiny_vocab_model(folder: Path, vocab_size: int = TINY_VOCAB_SIZE, num_layers: int = 4,
                           head_scale: float = 6.0, max_positions: int = 4096) -> Path:
    """Save a random Llama with a ``vocab_size``-token vocabulary and no tokenizer into ``folder``.

    For exactness tests only (engines start it with ``skip_tokenizer_init`` and take token-id
    prompts): plain vLLM's logprobs over the whole vocabulary give the target's distribution
    exactly. ``head_scale`` enlarges the LM head so that rows are neither flat nor one-hot.
    """
    import torch
    import transformers

    config = transformers.LlamaConfig(
        num_hidden_layers=num_layers, hidden_size=256, intermediate_size=512, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, vocab_size=vocab_size, max_position_embeddings=max_positions,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    model.save_pretrained(folder)
    return folder
