"""``SelfSkipProposer``: vLLM's draft-model proposer, drafting with the target's own layers."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from vllm.config import VllmConfig, get_layers_from_vllm_config
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
from vllm_selfspec.core.skip_set import SelfSkipConfigError
from vllm_selfspec.glue.draft_compilation import compilation_description
from vllm_selfspec.glue.draft_cuda_graphs import DraftCudaGraphs
from vllm_selfspec.glue.draft_free_sampling import PatchRunnerSamplesDraftFreeStepsPlainly
from vllm_selfspec.glue.draft_switching import DraftSwitching
from vllm_selfspec.glue.identity import mixed_attention_error

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


class SelfSkipProposer(DraftSwitching, DraftCudaGraphs, DraftModelProposer):
    """Drafts the booked K tokens per request by running the target model with sublayers skipped.

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
    - It drafts the number of tokens vLLM's scheduler booked for the step
      (:mod:`vllm_selfspec.glue.scheduler`, where the draft-length controller decides),
      0 included, and decides nothing from timing. Drafts are returned as one
      ``[batch, K]`` tensor, which vLLM's runner copies to the host asynchronously.
    - Optionally a cheaper LM head over a vocabulary subset.
    - Optionally adaptive exit (synchronous scheduling only): the batch stops drafting once
      no request's draft is confident (top-1 probability under a threshold that steers
      toward a target acceptance rate). Its decisions read the device at fixed points,
      rank 0's values broadcast to every tensor-parallel rank, so every rank runs the same
      number of draft forwards whatever its timing.

    Switching drafts lives in :class:`DraftSwitching`, the draft's CUDA graphs in
    :class:`DraftCudaGraphs`.
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, runner=None):
        super().__init__(vllm_config=vllm_config, device=device, runner=runner)
        PatchRunnerSamplesDraftFreeStepsPlainly.apply()
        self.settings: DraftSettings = self.speculative_config.draft
        self.skip_set = self.speculative_config.skip_set()
        self.exit_rule = self._exit_rule_for(self.settings)
        self._last_draft_length = 0
        """Tokens drafted per request at the previous step (what its verification judged)."""
        self._ran_full_length = True
        """Whether the previous step drafted all it was booked (adaptive exit did not stop it)."""
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

    @property
    def draft_vocab(self) -> tuple[int, ...]:
        """Token ids the draft head scores (empty: the full vocabulary)."""
        return self.settings.draft_vocab

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

    def validate_same_kv_cache_group(self, kv_cache_config) -> None:
        """Refuse, naming the model, when the draft's layers span several KV-cache groups.

        The config check refuses the known cases before any worker starts; this catches
        any other (vLLM's own check is a bare assertion).
        """
        group_of = {name: gid for gid, group in enumerate(kv_cache_config.kv_cache_groups)
                    for name in group.layer_names}
        groups = {group_of[name] for name in self._draft_attn_layer_names if name in group_of}
        if len(groups) > 1:
            kinds = {type(kv_cache_config.kv_cache_groups[gid].kv_cache_spec).__name__ for gid in groups}
            raise SelfSkipConfigError(mixed_attention_error(self.vllm_config.model_config.model, kinds))
        super().validate_same_kv_cache_group(kv_cache_config)

    def runtime_report(self) -> dict:
        """How the target and the draft run on this worker (for ``vllm-selfspec doctor``)."""
        compilation = self.vllm_config.compilation_config
        layers = get_layers_from_vllm_config(self.vllm_config, AttentionLayerBase)  # type: ignore[type-abstract]
        backend = next(iter(layers.values())).get_attn_backend().get_name() if layers else "none"
        on_gpu = self.device.type == "cuda"
        return {
            "model_runner": type(self._runner).__name__ if self._runner is not None else "none",
            "attention_backend": backend,
            "target_compilation": f"{compilation.mode.name}, CUDA graphs {compilation.cudagraph_mode.name}"
            if on_gpu else f"{compilation.mode.name} (no CUDA graphs on {self.device.type})",
            "draft_compilation": compilation_description(
                self.vllm_config, self.model.unwrap() if hasattr(self.model, "unwrap") else self.model),
            "draft_cuda_graphs": self.draft_cuda_graphs(),
        }

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
    ) -> torch.Tensor:
        """Draft the ``num_speculative_tokens`` tokens per request the scheduler booked, as a
        ``[batch, K]`` tensor; with adaptive exit the batch stops after the first step at which
        no request's draft is confident."""
        batch_size = common_attn_metadata.batch_size()
        if self.exit_rule is not None:
            self._update_exit_rule(num_rejected_tokens_gpu, common_attn_metadata)
        self.num_speculative_tokens = num_speculative_tokens
        self._last_draft_probs = None
        self._last_draft_length = 0
        if num_speculative_tokens == 0:
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
            # Caches of the verification step's shapes; the draft steps derive their own.
            _num_computed_tokens_cache=None,
            _token_to_req_indices_cache=None,
        )
        cudagraph_mode, input_batch_size, batch_size_across_dp = self._determine_batch_execution_and_padding(
            batch_size
        )

        input_ids = next_token_ids
        draft_ids: list[torch.Tensor] = []
        draft_probs: list[torch.Tensor] = []
        confident: torch.Tensor | None = None
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
                cudagraph_runtime_mode=cudagraph_mode,
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
            if top1 is not None and step + 1 < num_speculative_tokens:
                step_confident = self.exit_rule.keeps_drafting(top1)
                confident = step_confident if confident is None else confident & step_confident
                [any_confident] = self._read_on_every_rank(confident.any().reshape(1))
                if not any_confident:
                    break
        if draft_probs:
            self._last_draft_probs = torch.stack(draft_probs, dim=1).contiguous()
        drafts = torch.stack(draft_ids, dim=1)
        self._last_draft_length = drafts.shape[1]
        self._ran_full_length = drafts.shape[1] == num_speculative_tokens
        return drafts

    def _read_on_every_rank(self, values: torch.Tensor) -> list[int]:
        """``values`` read to the host (a blocking read), rank 0's under tensor parallelism: every
        rank gets the same numbers at the same point of the step, whatever its timing."""
        group = get_tp_group()
        if group.world_size > 1:
            values = group.broadcast(values.contiguous(), src=0)
        return values.tolist()

    def _update_exit_rule(self, num_rejected_tokens_gpu: torch.Tensor | None,
                          common_attn_metadata: CommonAttentionMetadata) -> None:
        """Move the exit threshold after the verification of the previous step's drafts.

        Each row verified ``min(query length - 1, drafted)`` drafts (a row the scheduler
        padded verifies placeholders, always rejected); a step that prefilled any row is
        skipped. The counts are read at this fixed point of the step, on every rank alike."""
        drafted = self._last_draft_length
        if drafted == 0 or num_rejected_tokens_gpu is None or common_attn_metadata.max_query_len > drafted + 1:
            return
        query_start = common_attn_metadata.query_start_loc
        verified = (query_start[1:] - query_start[:-1] - 1).clamp(min=0, max=drafted)
        rejected = num_rejected_tokens_gpu[: verified.shape[0]]
        counts = torch.stack([verified.sum(), (verified - rejected).clamp(min=0).sum()])
        total_verified, accepted = self._read_on_every_rank(counts)
        self.exit_rule.update(accepted, total_verified, ran_full_length=self._ran_full_length)

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

    @staticmethod
    def _exit_rule_for(settings: DraftSettings) -> AdaptiveDraftExit | None:
        """A fresh adaptive exit rule when the settings ask for one."""
        return (AdaptiveDraftExit(target_acceptance=settings.draft_exit_target_acceptance)
                if settings.adaptive_exit else None)
