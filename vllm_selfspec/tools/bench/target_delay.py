"""TEST-ONLY: a fixed delay on every target forward (or draft step), to set the regime drafting runs in.

Drafting does not pay with a 135M model on a CPU, where a verification of K+1 tokens
costs 1.4-2x a plain step. On a GPU serving a 13B-70B model a target forward costs
tens of milliseconds and barely grows with K+1 tokens; adding the same fixed delay to
every target forward (verification and plain steps alike, never to draft steps)
recreates that regime, so ``vllm-selfspec bench-controller`` can show that the
draft-length controller keeps drafting where drafting pays. A delay on every draft
step instead makes drafting a sure loss, for the test that it then stops. Never used
in serving.
"""

from __future__ import annotations

import time

from vllm_selfspec.glue.tuning_worker import DraftSwitchingWorkerExtension


class TargetDelayWorkerExtension(DraftSwitchingWorkerExtension):
    """Draft switching plus ``selfspec_delay_target_forward`` and ``selfspec_delay_draft_steps``
    (test and bench use only)."""

    def selfspec_delay_target_forward(self, seconds: float) -> None:
        """From now on, sleep ``seconds`` after every target forward (``_model_forward``; drafts call
        the draft model directly and are not delayed). Installs once; later calls change the delay."""
        runner = self.model_runner
        if not hasattr(runner, "_selfspec_target_delay_s"):
            forward = runner._model_forward

            def delayed_forward(*args, **kwargs):
                output = forward(*args, **kwargs)
                if runner._selfspec_target_delay_s:
                    time.sleep(runner._selfspec_target_delay_s)
                return output

            runner._model_forward = delayed_forward
        runner._selfspec_target_delay_s = seconds

    def selfspec_delay_draft_steps(self, seconds: float) -> None:
        """From now on, sleep ``seconds`` per draft step after every ``propose`` (a draft of K
        tokens sleeps K times as long). Installs once; later calls change the delay."""
        drafter = self.model_runner.drafter
        if not hasattr(drafter, "_selfspec_draft_delay_s"):
            propose = drafter.propose

            def delayed_propose(*args, **kwargs):
                drafts = propose(*args, **kwargs)
                if drafter._selfspec_draft_delay_s:
                    time.sleep(drafter._selfspec_draft_delay_s * drafts.shape[1])
                return drafts

            drafter.propose = delayed_propose
        drafter._selfspec_draft_delay_s = seconds


TARGET_DELAY_EXTENSION = f"{__name__}.{TargetDelayWorkerExtension.__qualname__}"
"""The value for vLLM's ``worker_extension_cls``."""
