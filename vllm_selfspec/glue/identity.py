"""Reading a model's identity from vLLM's model config."""

from __future__ import annotations

from pathlib import PurePath

from vllm_selfspec.core.profile import ModelIdentity

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
"""Decoder-only architectures whose vLLM layers have the pre-norm attention/MLP shape the draft walks."""


def model_identity(model_config) -> ModelIdentity:
    """The identity of the model behind a vLLM ``ModelConfig``."""
    hf = model_config.hf_text_config
    architectures = list(getattr(model_config, "architectures", None) or [])
    architecture = architectures[0] if architectures else type(hf).__name__
    num_heads = hf.num_attention_heads
    return ModelIdentity(
        name=PurePath(str(model_config.model).rstrip("/")).name,
        architecture=architecture,
        num_layers=hf.num_hidden_layers,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_attention_heads=num_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
        vocab_size=hf.vocab_size,
    )
