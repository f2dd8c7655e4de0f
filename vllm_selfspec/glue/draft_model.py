"""``LayerSkipDraftModel``: the target model's own modules, run with chosen sublayers bypassed."""

from __future__ import annotations

import torch
from torch import nn

from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet

_DECODER_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def _norm_with_residual(norm: nn.Module, delta: torch.Tensor, residual: torch.Tensor | None):
    """vLLM's fused residual add + RMSNorm; returns (normed input, new residual)."""
    if residual is None:
        return norm(delta), delta
    return norm(delta, residual)


class LayerSkipDraftModel(nn.Module):
    """A view of a vLLM decoder-only model that bypasses the sublayers of a ``SkipSet``.

    It owns no parameters: its children are the target's own embedding, decoder
    layers, final norm and LM head, so the draft shares the target's weight storage.
    A skipped sublayer contributes nothing to the residual stream and writes no KV;
    every other attention sublayer reads and writes the target's paged KV cache
    through vLLM's forward context, exactly as in the target's forward pass.
    """

    def __init__(self, target: nn.Module, skip_set: SkipSet):
        super().__init__()
        decoder = getattr(target, "model", None)
        layers = getattr(decoder, "layers", None)
        architecture = type(target).__name__
        if layers is None or not all(hasattr(layer, p) for layer in layers for p in _DECODER_LAYER_PARTS):
            raise SelfSkipConfigError(
                f"self_skip cannot drive {architecture}: its decoder layers lack "
                f"{'/'.join(_DECODER_LAYER_PARTS)}"
            )
        if len(layers) != skip_set.num_layers:
            raise SelfSkipConfigError(
                f"skip set is for {skip_set.num_layers} layers, {architecture} has {len(layers)}"
            )
        self.target = target
        self.skip_set = skip_set
        self._sublayers: list[tuple[nn.Module, nn.Module, bool]] = []
        for index, layer in enumerate(layers):
            if skip_set.runs_attn(index):
                self._sublayers.append((layer.input_layernorm, layer.self_attn, True))
            if skip_set.runs_mlp(index):
                self._sublayers.append((layer.post_attention_layernorm, layer.mlp, False))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states of the draft for each input token."""
        decoder = self.target.model
        delta = inputs_embeds if inputs_embeds is not None else decoder.embed_input_ids(input_ids)
        residual = None
        for norm, sublayer, is_attention in self._sublayers:
            normed, residual = _norm_with_residual(norm, delta, residual)
            delta = sublayer(positions=positions, hidden_states=normed) if is_attention else sublayer(normed)
        # SkipSet never skips every sublayer, so at least one residual add happened.
        hidden, _ = decoder.norm(delta, residual)
        return hidden

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits from the target's own LM head."""
        return self.target.compute_logits(hidden_states)
