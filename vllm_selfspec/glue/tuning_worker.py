"""``DraftSwitchingWorkerExtension``: change the draft of a running engine, for ``vllm-selfspec tune``.

Loaded through vLLM's own ``worker_extension_cls`` engine argument; its methods are
called on every worker with ``LLM.collective_rpc`` (all tensor-parallel ranks switch
together, so their collectives stay in step).
"""

from __future__ import annotations

import torch

from vllm_selfspec.core.skip_set import SkipSet


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
        # Each compiled skip set is one more entry in dynamo's cache for the draft's
        # forward; keep dynamo from falling back to eager after its default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 100_000)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, 100_000
        )
        drafter.reconfigure(skip_set, draft_vocab, adaptive_exit, target_acceptance, max_draft_tokens)
        return drafter.draft_plan()
