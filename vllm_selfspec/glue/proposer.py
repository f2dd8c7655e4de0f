"""``SelfSkipProposer``: vLLM's draft-model proposer, drafting with the target's own layers."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time

import torch
from torch import nn
from vllm.compilation.monitor import set_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode, VllmConfig, get_layers_from_vllm_config
from vllm.distributed import get_tp_group
from vllm.distributed.parallel_state import graph_capture
from vllm.forward_context import set_forward_context
from vllm.logger import init_logger
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.utils.gc_utils import freeze_gc_for_cudagraph_capture
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
from vllm_selfspec.core.draft_length_controller import DraftLengthController
from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.ranks import check_ranks_agree
from vllm_selfspec.core.skip_set import SelfSkipConfigError
from vllm_selfspec.glue.config import NO_ASYNC_SCHEDULING_REASON
from vllm_selfspec.glue.draft_compilation import (
    build_draft_model,
    compilation_description,
    is_compiled,
    release_draft_model,
)
from vllm_selfspec.glue.identity import mixed_attention_error

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply

CONTROLLER_LOG_INTERVAL_S = 10.0
"""How often the draft-length controller's choices and speeds are logged (INFO, rank 0)."""
DRAFT_LENGTH_HISTORY = 100_000
"""Steps whose batch size and chosen K the proposer keeps (for tests and the bench's plot)."""


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
    - Optionally a cheaper LM head over a vocabulary subset, and adaptive exit: the
      batch stops drafting once no request's draft is confident (top-1 probability
      under a threshold that steers toward a target acceptance rate).
    - Optionally the draft-length controller, which chooses each step's K (0: no
      drafts, so the next step is a plain one) per batch-size bucket from measured
      tokens per second; under tensor parallelism rank 0 decides and broadcasts.
    - No device-to-host sync inside the draft loop: drafts are returned as one
      ``[batch, steps]`` tensor, which vLLM's runner copies to the host
      asynchronously; exit decisions and acceptance counts reach the host through
      :class:`HostReadback`, and are acted on once their copy has landed.
    """

    def __init__(self, vllm_config: VllmConfig, device: torch.device, runner=None):
        super().__init__(vllm_config=vllm_config, device=device, runner=runner)
        self.settings: DraftSettings = self.speculative_config.draft
        self.skip_set = self.speculative_config.skip_set()
        self.exit_rule = _exit_rule(self.settings)
        self._still_confident = HostReadback(device, self.num_speculative_tokens)
        """Per draft step: whether any request's draft was still confident after it."""
        self._accepted = HostReadback(device, 1)
        self._pending_observation: tuple[int, bool, tuple | None] | None = None
        """For the accepted count in flight: drafted tokens, whether the draft ran its full
        length, and the controller's sample (batch size, K, requests, seconds) if any."""
        self._last_draft_ran_full_length = True
        self.controller = _controller(self.settings)
        self._steps = 0
        self._previous_step: tuple[int, int, float] | None = None
        """The previous step's batch size, K and start of drafting, for the controller's sample."""
        self._next_controller_log = 0.0
        self.draft_length_history: collections.deque[tuple[int, int]] = collections.deque(maxlen=DRAFT_LENGTH_HISTORY)
        """Each step's batch size and the K the controller chose (controller on only)."""
        self._target_model: nn.Module | None = None
        self._no_draft_cuda_graphs_reason = ""
        """Why the draft runs without the CUDA graphs vLLM's dispatcher would give it (empty: it does not)."""
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
        """(Re)build ``self.model`` over the target for the current settings (compiled by vLLM at its first call)."""
        release_draft_model(getattr(self, "model", None))  # the draft it replaces, if any
        self.model = build_draft_model(self.vllm_config, self._target_model, self.settings, self.skip_set)
        logger.info("self_skip draft: %s", compilation_description(self.vllm_config, self.model))
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
        the draft head changes, then compiled and, where the engine runs CUDA graphs,
        its graphs captured; the KV cache, the target and the engine stay as they are.
        ``settings.num_speculative_tokens`` caps the draft length under the engine's K
        (0: no drafts); the batch-size schedule stays the engine's. Under async scheduling
        the draft length must stay the engine's K, so adaptive exit, the controller and
        another K are refused before anything changes.
        """
        engine_k = self.speculative_config.num_speculative_tokens
        if self.vllm_config.scheduler_config.async_scheduling and (
                settings.chooses_length_while_drafting() or settings.num_speculative_tokens != engine_k):
            raise SelfSkipConfigError(
                f"this engine runs with async scheduling, so its draft must draft K={engine_k} tokens, "
                f"without adaptive exit or a draft-length controller ({NO_ASYNC_SCHEDULING_REASON}); "
                "start the engine with async_scheduling=False to switch to such a draft"
            )
        skip_set = settings.skip_set(self.skip_set.num_layers)
        rebuild = skip_set != self.skip_set or settings.draft_vocab != self.settings.draft_vocab
        self.settings = settings
        self.skip_set = skip_set
        self.exit_rule = _exit_rule(settings)
        self.controller = _controller(settings)
        self._pending_observation = None
        self._previous_step = None
        self.draft_length_history.clear()
        if rebuild:
            self._build_draft_model()
            self._compile_switched_draft()
            self._capture_switched_draft_cuda_graphs()

    def _compile_switched_draft(self) -> None:
        """Compile a draft switched in at run time, as vLLM's profiling run compiles the first one.

        The first call traces the graph, with the batch dimension dynamic; making it the
        dummy batch of :meth:`dummy_run` (as at start-up) keeps it from being a batch of
        one, whose size the trace would fix.
        """
        if is_compiled(self.model):
            with torch.inference_mode():
                self.dummy_run(self.max_num_tokens, use_cudagraphs=False)

    def _capture_switched_draft_cuda_graphs(self) -> None:
        """Capture the CUDA graphs of a draft switched in at run time, as vLLM captured the first one's.

        The graphs captured at start-up belong to the previous draft's compiled pieces,
        which went with it. This repeats, for the draft alone, what vLLM's runner does
        in ``capture_model`` for each of the draft's capture sizes (largest first, so
        smaller graphs reuse the pool's memory): capturing enabled, garbage collection
        frozen, vLLM's ``graph_capture`` context (its capture stream and the tensor-
        parallel all-reduce's capture mode; every rank switches together), warm-up runs
        without graphs, then one captured run. A failed capture turns the draft's graphs
        off with a WARNING (:meth:`dummy_run`), as at start-up.
        """
        descs = [desc for _, descs in self.cudagraph_dispatcher.get_capture_descs() for desc in descs]
        if not descs:
            return
        started = time.perf_counter()
        warmups = self.vllm_config.compilation_config.cudagraph_num_of_warmups
        # Every slot a padding slot: unlike at start-up, the KV cache now holds live and
        # prefix-cached blocks, and the slot buffer the last draft step's real slots.
        no_slots = torch.empty(0, dtype=torch.int64, device=self.device)
        set_cudagraph_capturing_enabled(True)
        try:
            with torch.inference_mode(), freeze_gc_for_cudagraph_capture(), graph_capture(device=self.device):
                for desc in descs:
                    for _ in range(warmups):
                        self.dummy_run(desc.num_tokens, use_cudagraphs=False)
                    self._synchronize()
                    self.dummy_run(desc.num_tokens, use_cudagraphs=True, is_graph_capturing=True,
                                   slot_mappings=self._get_slot_mapping(desc.num_tokens, no_slots))
                    self._synchronize()
                    if self._no_draft_cuda_graphs_reason:
                        return
        finally:
            set_cudagraph_capturing_enabled(False)
        logger.info("self_skip: captured the switched draft's CUDA graphs for %d batch sizes in %.1f s",
                    len(descs), time.perf_counter() - started)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def draft_plan(self) -> str:
        """What this rank's draft will run: plugin version, skip set and draft length."""
        return (
            f"vllm-selfspec {PLUGIN_VERSION}, {self.skip_set.describe()}, "
            f"num_speculative_tokens={self.settings.num_speculative_tokens}, "
            f"draft_vocab_size={len(self.draft_vocab)}, adaptive_exit={self.exit_rule is not None}, "
            f"draft_length_controller={self.settings.draft_length_controller}"
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
            "draft_compilation": compilation_description(self.vllm_config, self.model),
            "draft_cuda_graphs": self._draft_cuda_graphs(),
        }

    def dummy_run(self, num_tokens: int, use_cudagraphs: bool = True, is_graph_capturing: bool = False,
                  slot_mappings=None) -> None:
        """vLLM's dummy run of the draft (profiling, first compilation, CUDA-graph capture), made cheaper.

        Outside a capture it runs one draft step, not K, over at most ``max_num_seqs``
        tokens: every step runs the same graph on the same shapes, and a draft step
        feeds one token per request. A failed capture of the draft's graphs turns them
        off with a WARNING instead of stopping the engine.
        """
        if not is_graph_capturing:
            with self._draft_steps_held_at(1):
                return super().dummy_run(self._dummy_batch_size(num_tokens), use_cudagraphs, False, slot_mappings)
        try:
            return super().dummy_run(num_tokens, use_cudagraphs, is_graph_capturing, slot_mappings)
        except Exception as error:  # noqa: BLE001 - any capture failure: run the draft without graphs
            if not use_cudagraphs:
                raise
            self._turn_off_draft_cuda_graphs(f"capturing them failed: {type(error).__name__}: {error}")
            return super().dummy_run(num_tokens, False, is_graph_capturing, slot_mappings)

    def _dummy_batch_size(self, num_tokens: int) -> int:
        """The batch of a dummy draft step: the runner's, capped at the most requests a draft step feeds."""
        return max(2, min(num_tokens, self.vllm_config.scheduler_config.max_num_seqs))

    @contextlib.contextmanager
    def _draft_steps_held_at(self, steps: int):
        saved = self.num_speculative_tokens
        self.num_speculative_tokens = steps
        try:
            yield
        finally:
            self.num_speculative_tokens = saved

    def _turn_off_draft_cuda_graphs(self, reason: str) -> None:
        self.cudagraph_dispatcher.initialize_cudagraph_keys(CUDAGraphMode.NONE)
        self._no_draft_cuda_graphs_reason = reason
        logger.warning("self_skip: the draft runs without CUDA graphs: %s", reason)

    def _draft_cuda_graphs(self) -> str:
        """The draft's CUDA-graph mode and capture sizes, or "none" and why."""
        dispatcher = self.cudagraph_dispatcher
        if self.device.type != "cuda":
            return f"none: {self.device.type} has no CUDA graphs"
        if self._no_draft_cuda_graphs_reason:
            return f"none: {self._no_draft_cuda_graphs_reason}"
        if dispatcher.cudagraph_mode == CUDAGraphMode.NONE:
            return "none: the engine runs without CUDA graphs (enforce_eager or cudagraph_mode NONE)"
        sizes = sorted({desc.num_tokens for _, descs in dispatcher.get_capture_descs() for desc in descs})
        return f"{dispatcher.cudagraph_mode.name}, capture sizes {sizes}"

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
        """Draft up to ``num_speculative_tokens`` tokens per request, as a ``[batch, steps]`` tensor.

        With adaptive exit the batch stops after the first step at which no request's
        draft is confident, as soon as the host sees that step's flag (at once on the
        CPU; on a GPU the host may already have queued further steps).
        """
        started = time.perf_counter()
        batch_size = common_attn_metadata.batch_size()
        self._observe_verification(num_rejected_tokens_gpu, started, common_attn_metadata.max_query_len)
        num_speculative_tokens = min(num_speculative_tokens, self.settings.num_speculative_tokens)
        if self.controller is not None:
            num_speculative_tokens = min(num_speculative_tokens, self._controller_step(batch_size))
            self._previous_step = (batch_size, num_speculative_tokens, started)
        self.num_speculative_tokens = num_speculative_tokens
        self._last_draft_probs = None
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
        )
        cudagraph_mode, input_batch_size, batch_size_across_dp = self._determine_batch_execution_and_padding(
            batch_size
        )

        input_ids = next_token_ids
        draft_ids: list[torch.Tensor] = []
        draft_probs: list[torch.Tensor] = []
        confident: torch.Tensor | None = None
        for step in range(num_speculative_tokens):
            if confident is not None and self._no_draft_confident_before(step):
                break
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
            if top1 is not None:
                step_confident = self.exit_rule.keeps_drafting(top1)
                confident = step_confident if confident is None else confident & step_confident
                self._still_confident.put(step, confident.any())
        if draft_probs:
            self._last_draft_probs = torch.stack(draft_probs, dim=1).contiguous()
        drafts = torch.stack(draft_ids, dim=1)
        self._last_draft_ran_full_length = drafts.shape[1] == num_speculative_tokens
        return drafts

    def _no_draft_confident_before(self, step: int) -> bool:
        """Whether the latest step before ``step`` whose flag has reached the host had no confident draft.

        Confidence only falls over a draft, so the latest landed flag decides.
        """
        for earlier in range(step - 1, -1, -1):
            if self._still_confident.ready(earlier):
                return not self._still_confident.get(earlier)
        return False

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

    def _observe_verification(self, num_rejected_tokens_gpu: torch.Tensor | None, now: float,
                              max_query_len: int) -> None:
        """Feed the step that just ran to the adaptive exit rule (accepted vs drafted) and to the
        controller (tokens out and time taken, for the K the previous step drafted with).

        The drafted count is host data (the real drafts the runner scheduled per row);
        the accepted count is computed on the device and copied back without blocking.
        Both are updated once that copy has landed: at once on the CPU, else at a later
        step (one observation in flight at a time; a step that drafted nothing needs none).
        The controller skips a step that prefilled (its time says nothing about K) and
        one whose accepted count it cannot wait for.
        """
        if (self.exit_rule is None and self.controller is None) or self._runner is None:
            return
        self._apply_landed_observation()
        sample = None
        if self._previous_step is not None:
            previous_batch_size, previous_k, previous_start = self._previous_step
            if max_query_len <= previous_k + 1:  # only decode rows: one token each plus its drafts
                sample = (previous_batch_size, previous_k, self._runner.input_batch.num_reqs, now - previous_start)
        if self._pending_observation is not None:
            return
        batch = self._runner.input_batch
        # -1 marks a placeholder the scheduler padded in (a request resumed or fully
        # prefix-cached with one token left): not a draft, and always rejected.
        draft_counts = [sum(token >= 0 for token in batch.spec_token_ids[row]) for row in range(batch.num_reqs)]
        drafted = sum(draft_counts)
        if drafted == 0 or num_rejected_tokens_gpu is None or (self.exit_rule is None and sample is None):
            if sample is not None:
                self.controller.observe(sample[0], sample[1], tokens=sample[2], seconds=sample[3])
            return
        scheduled = torch.tensor(draft_counts, dtype=num_rejected_tokens_gpu.dtype,
                                 pin_memory=self.device.type == "cuda").to(self.device, non_blocking=True)
        accepted = (scheduled - num_rejected_tokens_gpu[: len(draft_counts)]).clamp(min=0).sum()
        self._accepted.put(0, accepted)
        self._pending_observation = (drafted, self._last_draft_ran_full_length, sample)
        self._apply_landed_observation()

    def _apply_landed_observation(self) -> None:
        if self._pending_observation is None or not self._accepted.ready(0):
            return
        drafted, ran_full_length, sample = self._pending_observation
        self._pending_observation = None
        accepted = self._accepted.get(0)
        if self.exit_rule is not None:
            self.exit_rule.update(accepted, drafted, ran_full_length=ran_full_length)
        if sample is not None:
            batch_size, k, requests, seconds = sample
            self.controller.observe(batch_size, k, tokens=requests + accepted, seconds=seconds)

    def _controller_step(self, batch_size: int) -> int:
        """The controller's K for this step; every ``decision_steps`` steps it decides anew
        (under tensor parallelism rank 0 decides and every rank adopts its plan)."""
        if self._steps % self.controller.settings.decision_steps == 0:
            plan = self.controller.replan()
            group = get_tp_group()
            if group.world_size > 1:
                self.controller.adopt(group.broadcast_object(plan, src=0))
            if group.rank_in_group == 0 and time.monotonic() >= self._next_controller_log:
                if self._next_controller_log:
                    logger.info("self_skip draft-length controller: %s", self.controller.summary())
                self._next_controller_log = time.monotonic() + CONTROLLER_LOG_INTERVAL_S
        self._steps += 1
        k = self.controller.draft_length(batch_size)
        self.draft_length_history.append((batch_size, k))
        return k


class HostReadback:
    """A few device integers copied to host memory without blocking, read once the copy has landed.

    On a GPU each ``put`` is a non-blocking copy into pinned memory followed by an
    event that ``ready`` polls (``Event.query`` never waits); the host reads the value
    through a NumPy view of that memory. On the CPU the copy is done when ``put`` returns.
    """

    def __init__(self, device: torch.device, size: int):
        on_gpu = device.type == "cuda"
        self._host = torch.zeros(max(size, 1), dtype=torch.int64, pin_memory=on_gpu)
        self._values = self._host.numpy()
        # One event per slot, recorded again at each put (an event reports its latest record).
        self._events = [torch.cuda.Event() for _ in self._values] if on_gpu else None

    def put(self, slot: int, value: torch.Tensor) -> None:
        self._host[slot : slot + 1].copy_(value.reshape(1), non_blocking=True)
        if self._events is not None:
            self._events[slot].record()

    def ready(self, slot: int) -> bool:
        return self._events is None or self._events[slot].query()

    def get(self, slot: int) -> int:
        return int(self._values[slot])


def _controller(settings: DraftSettings) -> DraftLengthController | None:
    """A fresh draft-length controller when the settings ask for one."""
    if settings.draft_length_controller is None:
        return None
    return DraftLengthController(settings.num_speculative_tokens, settings.draft_length_controller)


def _exit_rule(settings: DraftSettings) -> AdaptiveDraftExit | None:
    """A fresh adaptive exit rule when the settings ask for one."""
    return AdaptiveDraftExit(target_acceptance=settings.draft_exit_target_acceptance) if settings.adaptive_exit else None
