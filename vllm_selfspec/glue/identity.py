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
    return identity_from_hf_config(
        str(model_config.model), model_config.hf_text_config, getattr(model_config, "architectures", None)
    )


def identity_from_hf_config(model: str, hf, architectures: list[str] | None = None) -> ModelIdentity:
    """The identity of ``model`` from its Hugging Face config (no engine needed)."""
    architectures = list(architectures or getattr(hf, "architectures", None) or [])
    architecture = architectures[0] if architectures else type(hf).__name__
    num_heads = hf.num_attention_heads
    return ModelIdentity(
        name=PurePath(model.rstrip("/")).name,
        architecture=architecture,
        num_layers=hf.num_hidden_layers,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_attention_heads=num_heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or num_heads,
        vocab_size=hf.vocab_size,
    )


def attention_kinds(hf) -> set[str]:
    """The kinds of attention the model's layers use, from its Hugging Face config.

    ``layer_types`` where the config lists them (e.g. ``sliding_attention`` beside
    ``full_attention``); Qwen2's ``use_sliding_window`` with ``max_window_layers`` below
    the layer count also mixes the two. Each kind is a KV-cache group of its own in vLLM.
    Without a window every layer attends in full.
    """
    if getattr(hf, "sliding_window", None) is None:
        return {"full_attention"}
    layer_types = getattr(hf, "layer_types", None)
    if layer_types:
        return set(layer_types)
    window_layers = getattr(hf, "max_window_layers", None)
    if getattr(hf, "use_sliding_window", False) and window_layers is not None \
            and 0 < window_layers < hf.num_hidden_layers:
        return {"sliding_attention", "full_attention"}
    return {"full_attention"}


def mixed_attention_error(model: str, kinds: set[str]) -> str:
    """Why self_skip refuses a model whose layers fall in several KV-cache groups."""
    return (
        f"self_skip cannot run {model}: its layers use {len(kinds)} kinds of attention "
        f"({', '.join(sorted(kinds))}), which vLLM keeps in separate KV-cache groups, and the "
        "draft runs every kept attention layer with one attention metadata (as vLLM's own "
        "draft-model proposer does)"
    )
