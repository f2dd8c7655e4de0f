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
    The one exception is the optional cheap draft head, a copy of the LM-head rows of
    the draft vocabulary (``draft_vocab`` × hidden size).
    A skipped sublayer contributes nothing to the residual stream and writes no KV;
    every other attention sublayer reads and writes the target's paged KV cache
    through vLLM's forward context, exactly as in the target's forward pass.
    """

    def __init__(self, target: nn.Module, skip_set: SkipSet, draft_vocab: list[int] | tuple[int, ...] = ()):
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
        self.draft_vocab_ids: torch.Tensor | None = None
        self.draft_head_weight: torch.Tensor | None = None
        if draft_vocab:
            self._build_draft_head(list(draft_vocab))

    def _build_draft_head(self, draft_vocab: list[int]) -> None:
        """Copy the LM-head rows of ``draft_vocab``: the only memory the draft adds (len × hidden)."""
        lm_head = getattr(self.target, "lm_head", None)
        weight = getattr(lm_head, "weight", None)
        processor = getattr(self.target, "logits_processor", None)
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or processor is None:
            raise SelfSkipConfigError(
                f"draft_vocab_size: {type(self.target).__name__}'s LM head is not a plain weight "
                "matrix (quantized?); set draft_vocab_size=0"
            )
        if getattr(lm_head, "bias", None) is not None:
            raise SelfSkipConfigError("draft_vocab_size: LM heads with a bias are not supported; set it to 0")
        self.vocab_size = processor.org_vocab_size
        self.draft_vocab_ids = torch.tensor(draft_vocab, dtype=torch.long, device=weight.device)
        self.draft_head_weight = weight.detach().index_select(0, self.draft_vocab_ids).contiguous()

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

    def compute_draft_head_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary only (columns in ``draft_vocab_ids`` order)."""
        processor = self.target.logits_processor
        logits = torch.nn.functional.linear(hidden_states, self.draft_head_weight)
        if processor.soft_cap is not None:
            logits = torch.tanh(logits / processor.soft_cap) * processor.soft_cap
        if processor.scale != 1.0:
            logits = logits * processor.scale
        return logits

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits over the full vocabulary: the target's LM head, or the draft head's subset.

        With a draft vocabulary only its rows are computed; every other token gets
        ``-inf``, so greedy drafts and draft probabilities never pick one. Verification
        still scores the full vocabulary, so output is unchanged.
        """
        if self.draft_head_weight is None:
            return self.target.compute_logits(hidden_states)
        subset_logits = self.compute_draft_head_logits(hidden_states)
        logits = subset_logits.new_full((hidden_states.shape[0], self.vocab_size), float("-inf"))
        logits[:, self.draft_vocab_ids] = subset_logits
        return logits
