"""Switching the draft of a running engine: rebuilt over the same target, compiled, its graphs captured.

Mixed into :class:`vllm_selfspec.glue.proposer.SelfSkipProposer`; ``vllm-selfspec tune``,
``evaluate``, ``doctor`` and the tests switch drafts through
:func:`vllm_selfspec.glue.engine_calls.configure_draft`, which switches the scheduler's
draft booking first and then every worker's draft.
"""

from __future__ import annotations

import torch
from vllm.logger import init_logger

from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.skip_set import SelfSkipConfigError
from vllm_selfspec.glue.config import NO_ASYNC_SCHEDULING_REASON
from vllm_selfspec.glue.draft_compilation import (
    build_draft_model,
    compilation_description,
    is_compiled,
    release_draft_model,
)

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply


class DraftSwitching:
    """The proposer's draft building and switching (see the module docstring)."""

    def _build_draft_model(self) -> None:
        """(Re)build ``self.model`` over the target for the current settings (compiled by vLLM at its first call)."""
        previous = getattr(self, "model", None)
        release_draft_model(previous.unwrap() if hasattr(previous, "unwrap") else previous)
        self.model = build_draft_model(self.vllm_config, self._target_model, self.settings, self.skip_set)
        logger.info("self_skip draft: %s", compilation_description(self.vllm_config, self.model))
        if self.draft_vocab:
            logger.info(
                "self_skip draft head over %d of %d tokens (%.1f MiB of copied LM-head rows)",
                len(self.draft_vocab),
                self.model.vocab_size,
                self.model.draft_head_weight.nbytes / 2**20,
            )

    def reconfigure(self, settings: DraftSettings) -> None:
        """Switch the draft's settings in a running engine.

        The draft model is rebuilt over the same target modules when the skip set or
        the draft head changes, then compiled and, where the engine runs CUDA graphs,
        its graphs captured; the KV cache, the target and the engine stay as they are.
        How many tokens to draft is the scheduler's booking (switched before this, capped
        under the engine's K). Under async scheduling adaptive exit is refused.
        """
        if self.vllm_config.scheduler_config.async_scheduling and settings.adaptive_exit:
            raise SelfSkipConfigError(
                f"adaptive_exit=true: this engine runs with async scheduling ({NO_ASYNC_SCHEDULING_REASON}); "
                "start the engine with async_scheduling=False to switch to adaptive exit")
        skip_set = settings.skip_set(self.skip_set.num_layers)
        rebuild = skip_set != self.skip_set or settings.draft_vocab != self.settings.draft_vocab
        self.settings = settings
        self.skip_set = skip_set
        self.exit_rule = self._exit_rule_for(settings)
        if rebuild:
            self._build_draft_model()
            self.model = self._wrapped_as_vllm_wraps_drafts(self.model)
            self._compile_switched_draft()
            self._capture_switched_draft_cuda_graphs()

    def _compile_switched_draft(self) -> None:
        """Compile a draft switched in at run time, as vLLM's profiling run compiles the first one.

        The first call traces the graph, with the batch dimension dynamic; making it the
        dummy batch of :meth:`dummy_run` (as at start-up) keeps it from being a batch of
        one, whose size the trace would fix.
        """
        model = self.model.unwrap() if hasattr(self.model, "unwrap") else self.model
        if is_compiled(model):
            with torch.inference_mode():
                self.dummy_run(self.max_num_tokens, use_cudagraphs=False)
