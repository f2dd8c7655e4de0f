"""``DraftSwitchingWorkerExtension``: change the draft of a running engine, for ``vllm-selfspec tune``.

Loaded through vLLM's own ``worker_extension_cls`` engine argument; its methods are
called on every worker with ``LLM.collective_rpc`` (all tensor-parallel ranks switch
together, so their collectives stay in step).
"""

from __future__ import annotations

from vllm_selfspec.core.skip_set import SkipSet
from vllm_selfspec.glue.patches import PatchDynamoRecompileLimits


class DraftSwitchingWorkerExtension:
    """Worker methods that switch the self_skip draft without restarting the engine."""

    def selfspec_configure_draft(
        self,
        skip_attn: list[int],
        skip_mlp: list[int],
        draft_vocab: list[int],
        adaptive_exit: bool,
        target_acceptance: float,
        max_draft_tokens: int | None,
    ) -> str:
        """Install a new skip set, draft head, exit rule and draft-length cap; return the plan."""
        drafter = self.model_runner.drafter
        skip_set = SkipSet.build(drafter.skip_set.num_layers, skip_attn, skip_mlp)
        PatchDynamoRecompileLimits.apply()
        drafter.reconfigure(skip_set, draft_vocab, adaptive_exit, target_acceptance, max_draft_tokens)
        return drafter.draft_plan()


DRAFT_SWITCHING_EXTENSION = f"{__name__}.{DraftSwitchingWorkerExtension.__qualname__}"
"""The value for vLLM's ``worker_extension_cls`` that loads this extension."""
