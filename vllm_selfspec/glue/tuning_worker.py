"""``DraftSwitchingWorkerExtension``: change the draft of a running engine, for ``vllm-selfspec tune``.

Loaded through vLLM's own ``worker_extension_cls`` engine argument; its methods are
called on every worker with ``LLM.collective_rpc`` (all tensor-parallel ranks switch
together, so their collectives stay in step).
"""

from __future__ import annotations

from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.glue.patches import PatchDynamoRecompileLimits


class DraftSwitchingWorkerExtension:
    """Worker methods that switch the self_skip draft without restarting the engine."""

    def selfspec_configure_draft(self, settings: dict) -> str:
        """Install new draft settings (a ``DraftSettings`` as plain data); return the draft plan."""
        PatchDynamoRecompileLimits.apply()
        drafter = self.model_runner.drafter
        drafter.reconfigure(DraftSettings.from_builtins(settings))
        return drafter.draft_plan()


DRAFT_SWITCHING_EXTENSION = f"{__name__}.{DraftSwitchingWorkerExtension.__qualname__}"
"""The value for vLLM's ``worker_extension_cls`` that loads this extension."""
