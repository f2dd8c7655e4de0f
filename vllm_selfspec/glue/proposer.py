"""``SelfSkipProposer``: vLLM's draft-model proposer, drafting with the target's own layers."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from vllm.config import CompilationMode, CUDAGraphMode, VllmConfig, get_layers_from_vllm_config
from vllm.distributed import get_tp_group
from vllm.forward_context import set_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.sample.metadata import SamplingMetadata
from vllm.v1.sample.ops.topk_topp_sampler import (
    apply_top_k_top_p,
    empty_exponential_noise_like,
    sample_with_exponential_noise,
)
from vllm.v1.sample.sampler import _SAMPLING_EPS
from vllm.v1.spec_decode.draft_model import DraftModelProposer

from vllm_selfspec.compat import PLUGIN_VERSION
from vllm_selfspec.core.adaptive_exit import AdaptiveDraftExit
from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.ranks import check_ranks_agree
from vllm_selfspec.glue.draft_model import LayerSkipDraftModel

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply


def sample_as_requested(
    logits: torch.Tensor, sampling_metadata: SamplingMetadata, use_fp64_gumbel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one draft token per row from the request's own distribution; return tokens and probabilities.

    The draft's logits are shaped as vLLM's sampler shapes the target's: divided by the
    temperature, then top-k and top-p applied (vLLM's own ``apply_top_k_top_p``).
    vLLM's draft sampling applies the temperature only; a draft distribution closer to
    the target's is accepted more often, and rejection sampling stays exact for any
    draft distribution, provided the probabilities returned are the ones sampled from.
    Greedy rows (temperature 0) take the argmax.
    """
    temperature = sampling_metadata.temperature
    is_greedy = temperature < _SAMPLING_EPS
    logits = logits / torch.where(is_greedy, 1.0, temperature).unsqueeze(1)
    logits = apply_top_k_top_p(logits, sampling_metadata.top_k, sampling_metadata.top_p)
    probs = logits.softmax(dim=-1, dtype=torch.float32)
    noise = empty_exponential_noise_like(probs, use_fp64_gumbel).exponential_()
    tokens = sample_with_exponential_noise(probs.clone(), noise)
    return torch.where(is_greedy, probs.argmax(dim=-1), tokens), probs


class SelfSkipProposer(DraftModelProposer):
    """Drafts K tokens per request by running the target model with sublayers skipped.

    Differences from ``DraftModelProposer``, whose batching, attention-metadata and
    sampling machinery it reuses:

    - No second model and no KV cache of its own: the draft is a
      :class:`LayerSkipDraftModel` over the target's modules, and its attention
      sublayers read and write the target's paged KV blocks.
    - No draft prefill: the target's KV already covers every verified token, so
      each draft step is one token per running request. Step 1 feeds the token the
      target just sampled; step k feeds the draft of step k-1.
    - Draft KV lands only in lookahead slots after the last verified token, which
      the next verification pass overwrites with the full model's KV.
    - Optionally a cheaper LM head over a vocabulary subset, and adaptive exit: a
      request stops drafting once its draft's top-1 probability falls under a
      threshold that steers toward a target acceptance rate. Drafts then differ in
      length per request, and are returned as lists, as vLLM's n-gram proposer does.
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, runner=None):
        super().__init__(vllm_config=vllm_config, device=device, runner=runner)
        self.settings: DraftSettings = self.speculative_config.draft
        self.skip_set = self.speculative_config.skip_set()
        self.exit_rule = _exit_rule(self.settings)
        self._drafted_last_step: dict[str, int] = {}
        self._last_step_exited_early = False
        self._target_model: nn.Module | None = None
        self._runner = runner
        logger.info(
            "self_skip proposer on %s (vLLM V1 model runner): %s",
            type(runner).__name__ if runner is not None else "no runner",
            self.skip_set.describe(),
        )

    def load_model(self, target_model: nn.Module) -> None:
        """Wrap the already-loaded target; nothing is loaded or copied.

        Under tensor parallelism every rank first checks that all ranks will draft
        with the same skip set, so a mismatch fails at start-up instead of deadlocking.
        """
        if self.supports_mm_inputs:
            raise ValueError("self_skip does not support multimodal models yet")
        self.check_plan_agrees_across_ranks()
        self._target_model = target_model
        self._build_draft_model()
        self._draft_attn_layer_names = {
            name
            for name, layer in get_layers_from_vllm_config(
                self.vllm_config, AttentionLayerBase  # type: ignore[type-abstract]
            ).items()
            if layer.get_kv_cache_spec(self.vllm_config) is not None
        }

    def _build_draft_model(self) -> None:
        """(Re)build ``self.model`` over the target for the current skip set and draft head."""
        self.model = LayerSkipDraftModel(self._target_model, self.skip_set, self.draft_vocab)
        if (
            self.vllm_config.compilation_config.mode != CompilationMode.NONE
            and not self.speculative_config.enforce_eager
        ):
            # The target is compiled, so its custom ops run as plain PyTorch; compile
            # the draft too (one graph per skip set, dynamic in the batch size).
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
            logger.info("self_skip draft compiled with torch.compile (dynamic batch size)")
        if self.draft_vocab:
            logger.info(
                "self_skip draft head over %d of %d tokens (%.1f MiB of copied LM-head rows)",
                len(self.draft_vocab),
                self.model.vocab_size,
                self.model.draft_head_weight.nbytes / 2**20,
            )

    @property
    def draft_vocab(self) -> tuple[int, ...]:
        """Token ids the draft head scores (empty: the full vocabulary)."""
        return self.settings.draft_vocab

    def reconfigure(self, settings: DraftSettings) -> None:
        """Switch the draft's settings in a running engine (``vllm-selfspec tune``, ``evaluate``).

        The draft model is rebuilt over the same target modules when the skip set or
        the draft head changes; the KV cache, the target and the engine stay as they are.
        ``settings.num_speculative_tokens`` caps the draft length under the engine's K
        (0: no drafts); the batch-size schedule stays the engine's.
        """
        skip_set = settings.skip_set(self.skip_set.num_layers)
        rebuild = skip_set != self.skip_set or settings.draft_vocab != self.settings.draft_vocab
        self.settings = settings
        self.skip_set = skip_set
        self.exit_rule = _exit_rule(settings)
        self._drafted_last_step = {}
        if rebuild:
            self._build_draft_model()

    def draft_plan(self) -> str:
        """What this rank's draft will run: plugin version, skip set and draft length."""
        return (
            f"vllm-selfspec {PLUGIN_VERSION}, {self.skip_set.describe()}, "
            f"num_speculative_tokens={self.settings.num_speculative_tokens}, "
            f"draft_vocab_size={len(self.draft_vocab)}, adaptive_exit={self.exit_rule is not None}"
        )

    def check_plan_agrees_across_ranks(self) -> None:
        """Gather every tensor-parallel rank's ``draft_plan`` and raise if any differs."""
        group = get_tp_group()
        if group.world_size == 1:
            return
        plans: list[str | None] = [None] * group.world_size
        torch.distributed.all_gather_object(plans, self.draft_plan(), group=group.cpu_group)
        check_ranks_agree([str(plan) for plan in plans])
        logger.info("self_skip: all %d tensor-parallel ranks draft with %s", group.world_size,
                    self.draft_plan())

    def initialize_cudagraph_keys(self, cudagraph_mode: CUDAGraphMode) -> None:
        """No CUDA graphs for the draft: its graph is not captured with the target's."""
        super().initialize_cudagraph_keys(CUDAGraphMode.NONE)

    @torch.inference_mode()
    def propose(
        self,
        num_speculative_tokens: int,
        target_token_ids: torch.Tensor,
        target_positions: torch.Tensor,
        target_hidden_states: torch.Tensor,
        next_token_ids: torch.Tensor,
        token_indices_to_sample: torch.Tensor | None,
        common_attn_metadata: CommonAttentionMetadata,
        sampling_metadata: SamplingMetadata,
        mm_embed_inputs=None,
        num_rejected_tokens_gpu: torch.Tensor | None = None,
        slot_mappings=None,
    ) -> torch.Tensor | list[list[int]]:
        """Draft up to ``num_speculative_tokens`` tokens per request.

        Returns a ``[batch, K]`` tensor, or per-request lists of at most K ids when
        adaptive exit is on (a request's draft ends at its first low-confidence token).
        """
        self._observe_verification(common_attn_metadata, num_rejected_tokens_gpu)
        num_speculative_tokens = min(num_speculative_tokens, self.settings.num_speculative_tokens)
        self.num_speculative_tokens = num_speculative_tokens
        self._last_draft_probs = None
        batch_size = common_attn_metadata.batch_size()
        if num_speculative_tokens == 0:
            self._drafted_last_step = {}
            return torch.empty(batch_size, 0, dtype=torch.int64, device=self.device)

        if token_indices_to_sample is None:
            token_indices_to_sample = common_attn_metadata.query_start_loc[1:] - 1
        # Position of each request's last verified token; the draft starts one after it.
        positions = target_positions[token_indices_to_sample]
        seq_lens = common_attn_metadata.seq_lens.clone()
        if num_rejected_tokens_gpu is not None:
            seq_lens -= num_rejected_tokens_gpu
        upper_bound = common_attn_metadata.seq_lens_cpu_upper_bound
        cad = dataclasses.replace(
            common_attn_metadata,
            seq_lens=seq_lens,
            seq_lens_cpu_upper_bound=None if upper_bound is None else upper_bound.clone(),
            num_actual_tokens=batch_size,
            max_query_len=1,
            query_start_loc=self.arange[: batch_size + 1],
            query_start_loc_cpu=torch.from_numpy(self.token_arange_np[: batch_size + 1]).clone(),
            is_prefilling=None,
            positions=None,
        )
        _, input_batch_size, batch_size_across_dp = self._determine_batch_execution_and_padding(
            batch_size
        )

        input_ids = next_token_ids
        draft_ids: list[torch.Tensor] = []
        draft_probs: list[torch.Tensor] = []
        draft_lengths = [num_speculative_tokens] * batch_size
        still_drafting = list(range(batch_size))
        for step in range(num_speculative_tokens):
            positions = self._update_positions_dependent_metadata(
                positions, cad, batch_size, input_batch_size, self.block_size
            )
            _, per_layer_attn_metadata = self.build_per_group_and_layer_attn_metadata(
                cad, draft_index=step + 1
            )
            self.input_ids[:batch_size] = input_ids
            with set_forward_context(
                per_layer_attn_metadata,
                self.vllm_config,
                num_tokens=input_batch_size,
                num_tokens_across_dp=batch_size_across_dp,
                cudagraph_runtime_mode=CUDAGraphMode.NONE,
                slot_mapping=self._get_slot_mapping(input_batch_size),
            ):
                hidden_states = self.model(
                    input_ids=self.input_ids[:input_batch_size],
                    positions=self._get_positions(input_batch_size),
                )
            tokens, probs, top1 = self._draft_tokens(hidden_states[:batch_size], sampling_metadata)
            draft_ids.append(tokens)
            if probs is not None:
                draft_probs.append(probs)
            input_ids = tokens.int()
            if top1 is not None:
                confidence = top1.tolist()
                for row in list(still_drafting):
                    if not self.exit_rule.keeps_drafting(confidence[row]):
                        draft_lengths[row] = step + 1
                        still_drafting.remove(row)
                if not still_drafting:
                    break
        if draft_probs:
            self._last_draft_probs = torch.stack(draft_probs, dim=1).contiguous()
        drafts = torch.stack(draft_ids, dim=1)
        self._remember_drafts(draft_lengths, num_speculative_tokens)
        if self.exit_rule is None:
            return drafts
        return [row[:length] for row, length in zip(drafts.tolist(), draft_lengths)]

    def _draft_tokens(
        self, hidden_states: torch.Tensor, sampling_metadata: SamplingMetadata
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Draft tokens, their probabilities (probabilistic drafting only) and, with adaptive
        exit, each request's top-1 draft probability."""
        if self._enable_probabilistic_draft_probs and not sampling_metadata.all_greedy:
            tokens, probs = sample_as_requested(
                self.model.compute_logits(hidden_states), sampling_metadata, self.use_fp64_gumbel
            )
            top1 = probs.max(dim=-1).values if self.exit_rule is not None else None
            return tokens, probs, top1
        if self.exit_rule is None and not self.draft_vocab:
            return self._greedy_sample(hidden_states), None, None
        if self.draft_vocab:
            # Greedy over the subset: no full-vocabulary logits are built.
            logits = self.model.compute_draft_head_logits(hidden_states)
            top1, best = torch.softmax(logits, dim=-1).max(dim=-1)
            return self.model.draft_vocab_ids[best], None, top1 if self.exit_rule is not None else None
        logits = self.model.compute_logits(hidden_states)
        top1, tokens = torch.softmax(logits, dim=-1).max(dim=-1)
        return tokens, None, top1

    def _request_ids(self) -> list[str]:
        """The request ids of the batch rows, in order (from the model runner's input batch)."""
        return list(self._runner.input_batch.req_ids) if self._runner is not None else []

    def _remember_drafts(self, draft_lengths: list[int], num_speculative_tokens: int) -> None:
        """Note each request's draft length, to score them at the next verification."""
        if self.exit_rule is None:
            return
        req_ids = self._request_ids()
        self._drafted_last_step = dict(zip(req_ids, draft_lengths))
        self._last_step_exited_early = any(n < num_speculative_tokens for n in draft_lengths)

    def _observe_verification(
        self, common_attn_metadata: CommonAttentionMetadata, num_rejected_tokens_gpu: torch.Tensor | None
    ) -> None:
        """Feed the verification that just ran (accepted vs drafted) to the adaptive exit rule."""
        if self.exit_rule is None or not self._drafted_last_step or num_rejected_tokens_gpu is None:
            return
        query_lens = torch.diff(common_attn_metadata.query_start_loc_cpu).tolist()
        rejected = num_rejected_tokens_gpu.tolist()
        req_ids = self._request_ids()
        drafted = accepted = 0
        for row, req_id in enumerate(req_ids[: len(rejected)]):
            verified = min(self._drafted_last_step.get(req_id, 0), query_lens[row] - 1)
            if verified > 0:
                drafted += verified
                accepted += max(verified - int(rejected[row]), 0)
        self.exit_rule.update(accepted, drafted, ran_full_length=not self._last_step_exited_early)


def _exit_rule(settings: DraftSettings) -> AdaptiveDraftExit | None:
    """A fresh adaptive exit rule when the settings ask for one."""
    return AdaptiveDraftExit(target_acceptance=settings.draft_exit_target_acceptance) if settings.adaptive_exit else None
