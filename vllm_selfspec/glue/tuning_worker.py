"""``DraftSwitchingWorkerExtension``: change and inspect the draft of a running engine.

For ``vllm-selfspec tune``, ``evaluate`` and ``doctor``, and the tests. Loaded through
vLLM's own ``worker_extension_cls`` engine argument; its methods are called on every
worker with ``LLM.collective_rpc`` (all tensor-parallel ranks switch together, so their
collectives stay in step). A switch goes through
:func:`vllm_selfspec.glue.engine_calls.configure_draft`, which switches the scheduler's
draft booking too; the draft-length record comes from the engine core.
"""

from __future__ import annotations

from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.glue.host_reads import unwatch_propose, watch_propose


class DraftSwitchingWorkerExtension:
    """Worker methods that switch the self_skip draft without restarting the engine, and report on it."""

    def selfspec_configure_draft(self, settings: dict) -> str:
        """Install new draft settings (a ``DraftSettings`` as plain data) in this worker; return the draft plan."""
        drafter = self.model_runner.drafter
        drafter.reconfigure(DraftSettings.from_builtins(settings))
        return drafter.draft_plan()

    def selfspec_watch_host_reads(self) -> None:
        """Start recording host reads of tensors by the plugin inside ``propose``, and each call's lengths."""
        watch_propose(self.model_runner.drafter)

    def selfspec_host_reads(self) -> dict:
        """Stop recording; what ``unwatch_propose`` reports (calls, host reads, adaptive exit's agreed
        reads, each call's booked and drafted length) since ``selfspec_watch_host_reads``."""
        return unwatch_propose(self.model_runner.drafter)

    def selfspec_runtime(self) -> dict:
        """How this worker runs the target and the draft: runner, attention backend, compilation, graphs."""
        return self.model_runner.drafter.runtime_report()


DRAFT_SWITCHING_EXTENSION = f"{__name__}.{DraftSwitchingWorkerExtension.__qualname__}"
"""The value for vLLM's ``worker_extension_cls`` that loads this extension."""

DRAFT_SWITCHING_ENGINE = {"worker_extension_cls": DRAFT_SWITCHING_EXTENSION, "async_scheduling": False}
"""Engine arguments for an engine whose draft ``tune`` or ``evaluate`` switches: the extension,
and no async scheduling, under which a draft may not switch to adaptive exit."""
