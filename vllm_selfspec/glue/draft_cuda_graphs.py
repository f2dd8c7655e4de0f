"""The draft's CUDA graphs: what vLLM's dispatcher gives it, captured alike on every rank.

Mixed into :class:`vllm_selfspec.glue.proposer.SelfSkipProposer`, ahead of vLLM's
``DraftModelProposer``, whose dispatcher and dummy run it keeps and calls:

- **Keys.** vLLM gives a draft PIECEWISE graphs only, from the engine's mode. Under
  ``FULL_DECODE_ONLY`` that leaves the draft none, and under ``FULL`` the target replays
  full graphs while the draft replays piecewise ones: each gets a WARNING naming what the
  draft runs with, and ``doctor`` prints it. A draft whose capture failed stays without
  graphs when vLLM initialises the keys again (after its memory-profiling capture).
- **A failed capture is agreed on.** Each capture size's outcome is gathered from every
  tensor-parallel rank; if any rank failed, every rank turns the draft's graphs off and
  runs the eager dummy step together, so no rank runs collectives its peers never join.
- **A switched draft** (``reconfigure``) gets its graphs captured as vLLM's runner captured
  the first one's, with the device synchronised around each capture, an earlier failure
  forgotten, vLLM's heap freeze kept, and vLLM's breakable-graph wrapper where it wraps drafts.
"""

from __future__ import annotations

import contextlib
import gc
import time

import torch
from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphWrapper, is_breakable_cudagraph_enabled
from vllm.compilation.monitor import set_cudagraph_capturing_enabled
from vllm.config import CUDAGraphMode
from vllm.distributed import get_tp_group
from vllm.distributed.parallel_state import graph_capture
from vllm.logger import init_logger
from vllm.utils.gc_utils import freeze_gc_for_cudagraph_capture

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply


class DraftCudaGraphs:
    """The proposer's CUDA-graph side (see the module docstring)."""

    _no_draft_cuda_graphs_reason: str = ""
    """Why the draft runs without the CUDA graphs vLLM's dispatcher would give it (empty: it does not)."""

    def initialize_cudagraph_keys(self, cudagraph_mode: CUDAGraphMode) -> None:
        """vLLM's keys for the draft, unless its graphs are off; a WARNING where the engine's mode
        gives the draft other graphs than the target's."""
        super().initialize_cudagraph_keys(cudagraph_mode)
        if self._no_draft_cuda_graphs_reason:
            self.cudagraph_dispatcher.initialize_cudagraph_keys(CUDAGraphMode.NONE)
            return
        if self.device.type != "cuda" or cudagraph_mode == CUDAGraphMode.NONE or self.speculative_config.enforce_eager:
            return
        if self.cudagraph_dispatcher.cudagraph_mode == CUDAGraphMode.NONE:
            self._no_draft_cuda_graphs_reason = (
                f"the engine's cudagraph_mode {cudagraph_mode.name} captures no piecewise graphs, the only "
                "kind vLLM 0.32 captures for a draft; use FULL_AND_PIECEWISE (vLLM's default) or PIECEWISE")
            logger.warning("self_skip: the draft runs without CUDA graphs: %s", self._no_draft_cuda_graphs_reason)
        elif cudagraph_mode.decode_mode() == CUDAGraphMode.FULL and cudagraph_mode.mixed_mode() != CUDAGraphMode.PIECEWISE:
            logger.warning("self_skip: with cudagraph_mode %s the target replays FULL graphs and the draft "
                           "PIECEWISE ones (vLLM 0.32 captures no FULL graphs for a draft)", cudagraph_mode.name)

    def dummy_run(self, num_tokens: int, use_cudagraphs: bool = True, is_graph_capturing: bool = False,
                  slot_mappings=None) -> None:
        """vLLM's dummy run of the draft (profiling, first compilation, CUDA-graph capture), made cheaper.

        Outside a capture it runs one draft step, not K, over at most ``max_num_seqs``
        tokens: every step runs the same graph on the same shapes, and a draft step
        feeds one token per request. A failed capture on any rank turns the draft's graphs
        off on every rank with a WARNING, instead of stopping the engine.
        """
        if not is_graph_capturing:
            with self._draft_steps_held_at(1):
                return super().dummy_run(self._dummy_batch_size(num_tokens), use_cudagraphs, False, slot_mappings)
        failure = ""
        try:
            self._capture(num_tokens, use_cudagraphs, slot_mappings)
        except Exception as error:  # noqa: BLE001 - any capture failure: run the draft without graphs
            if not use_cudagraphs:
                raise
            failure = f"{type(error).__name__}: {error}"
        failures = self._capture_failures_on_every_rank(failure)
        if failures:
            self._turn_off_draft_cuda_graphs(f"capturing them failed ({failures})")
            super().dummy_run(num_tokens, False, is_graph_capturing, slot_mappings)

    def _capture(self, num_tokens: int, use_cudagraphs: bool, slot_mappings) -> None:
        """One capture of the draft's graph for ``num_tokens`` (vLLM's dummy run under capture)."""
        super().dummy_run(num_tokens, use_cudagraphs, True, slot_mappings)

    @staticmethod
    def _capture_failures_on_every_rank(failure: str) -> str:
        """Every tensor-parallel rank's capture failure, ``"rank 1: ..."`` (empty when none failed)."""
        group = get_tp_group()
        if group.world_size == 1:
            return f"rank 0: {failure}" if failure else ""
        failures: list[str | None] = [None] * group.world_size
        torch.distributed.all_gather_object(failures, failure, group=group.cpu_group)
        return "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(failures) if text)

    @contextlib.contextmanager
    def _draft_steps_held_at(self, steps: int):
        saved = self.num_speculative_tokens
        self.num_speculative_tokens = steps
        try:
            yield
        finally:
            self.num_speculative_tokens = saved

    def _dummy_batch_size(self, num_tokens: int) -> int:
        """The batch of a dummy draft step: the runner's, capped at the most requests a draft step feeds."""
        return max(2, min(num_tokens, self.vllm_config.scheduler_config.max_num_seqs))

    def _turn_off_draft_cuda_graphs(self, reason: str) -> None:
        self.cudagraph_dispatcher.initialize_cudagraph_keys(CUDAGraphMode.NONE)
        self._no_draft_cuda_graphs_reason = reason
        logger.warning("self_skip: the draft runs without CUDA graphs: %s", reason)

    def _wrapped_as_vllm_wraps_drafts(self, model):
        """``model`` in vLLM's breakable-graph wrapper where vLLM's runner wraps its drafter's model."""
        if (self.device.type == "cuda" and is_breakable_cudagraph_enabled()
                and self.vllm_config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE
                and not self.vllm_config.parallel_config.use_ubatching):
            return BreakableCUDAGraphWrapper(model, self.vllm_config, runtime_mode=CUDAGraphMode.PIECEWISE)
        return model

    def _capture_switched_draft_cuda_graphs(self) -> None:
        """Capture the CUDA graphs of a draft switched in at run time, as vLLM captured the first one's.

        The graphs captured at start-up belong to the previous draft's compiled pieces,
        which went with it. This repeats, for the draft alone, what vLLM's runner does
        in ``capture_model`` for each of the draft's capture sizes (largest first, so
        smaller graphs reuse the pool's memory): keys initialised afresh from the engine's
        mode (an earlier failure forgotten), capturing enabled, garbage collection frozen,
        vLLM's ``graph_capture`` context (its capture stream and the tensor-parallel
        all-reduce's capture mode; every rank switches together), warm-up runs without
        graphs, then one captured run, the device synchronised around it. Afterwards vLLM's
        post-warm-up heap freeze is restored (the capture context unfreezes the heap).
        """
        if self._no_draft_cuda_graphs_reason:  # an earlier draft's failure: this one tries afresh
            self._no_draft_cuda_graphs_reason = ""
            self.initialize_cudagraph_keys(self.vllm_config.compilation_config.cudagraph_mode)
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
            gc.freeze()
        logger.info("self_skip: captured the switched draft's CUDA graphs for %d batch sizes in %.1f s",
                    len(descs), time.perf_counter() - started)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def draft_cuda_graphs(self) -> str:
        """The draft's CUDA-graph mode and capture sizes, or "none" and why (``doctor``)."""
        dispatcher = self.cudagraph_dispatcher
        if self.device.type != "cuda":
            return f"none: {self.device.type} has no CUDA graphs"
        if self._no_draft_cuda_graphs_reason:
            return f"none: {self._no_draft_cuda_graphs_reason}"
        if dispatcher.cudagraph_mode == CUDAGraphMode.NONE:
            return "none: the engine runs without CUDA graphs (enforce_eager or cudagraph_mode NONE)"
        sizes = sorted({desc.num_tokens for _, descs in dispatcher.get_capture_descs() for desc in descs})
        target_mode = self.vllm_config.compilation_config.cudagraph_mode
        query_len = 1 + self.speculative_config.num_speculative_tokens
        return (f"{dispatcher.cudagraph_mode.name}, capture sizes {sizes} (target: {target_mode.name}; vLLM 0.32's "
                f"V1 runner captures FULL decode graphs for {query_len} tokens per request only, so a step "
                "that books fewer drafts, K = 0 included, replays PIECEWISE graphs)")
